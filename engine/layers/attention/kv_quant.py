"""The fp8 (e4m3) KV cache's number format, shared by the attention backends.

A cache of dtype KV_FP8 holds K / k_scale and V / v_scale, rounded to e4m3 and saturated to +-448
(per layer one k_scale and one v_scale, Python floats); attention reads k_cache * k_scale. A cache in
the model's own dtype holds K and V as they are, and its scales are 1.0. As vLLM's and TensorRT-LLM's
fp8 KV caches: half the bytes of bfloat16 per token, so twice the blocks and half the attention reads.
"""
from __future__ import annotations

import math

import torch

KV_FP8 = torch.float8_e4m3fn
KV_FP8_MAX = float(torch.finfo(KV_FP8).max)  # 448; a cast past it gives NaN, so values are clamped first


def quantize_kv(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x / scale in e4m3, saturated. x: any float tensor -> same shape, KV_FP8.

    Computed as x * (1 / scale) in float32, exactly as the Triton store kernel does, so both backends
    write the same bytes."""
    return (x.float() * (1.0 / scale)).clamp(-KV_FP8_MAX, KV_FP8_MAX).to(KV_FP8)


def check_kv_scales(cache_dtype: torch.dtype, k_scale: float, v_scale: float) -> None:
    """Scales are Python numbers (kernel scalar arguments, constants in a captured CUDA graph), finite
    and positive; only an fp8 cache is scaled, so any other cache must get 1.0."""
    for name, scale in (("k_scale", k_scale), ("v_scale", v_scale)):
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ValueError(f"{name}: must be a Python float, got {type(scale).__name__}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"{name}: must be finite and > 0, got {scale}")
        if scale != 1.0 and cache_dtype != KV_FP8:
            raise ValueError(f"{name}: only an fp8 ({KV_FP8}) cache is scaled; a {cache_dtype} cache needs 1.0, "
                             f"got {scale}")
