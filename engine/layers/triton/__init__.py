"""Triton kernels for the layers' CUDA fast path (RMSNorm, RoPE, SiLU-and-mul here; paged attention and
the KV-cache store in engine.layers.attention.triton). Kernel modules import triton; this package does
not. The input checks their wrappers share live in engine.layers.kernel_checks, re-exported here.
"""
from __future__ import annotations

from engine.layers.kernel_checks import (FLOAT_DTYPES, check_last_dim_contiguous, check_shape, check_tensor,
                                         interpreting, next_power_of_2)

__all__ = ["FLOAT_DTYPES", "check_last_dim_contiguous", "check_shape", "check_tensor", "interpreting",
           "next_power_of_2"]
