"""Activations quantized to fp8 by the kernel that produced them, for an fp8 linear layer to multiply.

An fp8 linear (quantization/fp8.py) quantizes its input per token before its GEMM: one more launch and
pass over the activations per layer input. Where the input comes from a kernel that holds each whole
row anyway (RMSNorm, SiLU-and-mul), that kernel quantizes the row itself, with the same bits, and hands
this over instead of the activations. Layers that take it say so, and how, with `LinearBase.fp8_input()`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class Fp8Activations(NamedTuple):
    q: torch.Tensor  # [tokens, features] float8_e4m3fn
    scales: torch.Tensor  # [tokens, 1] float32: row m is q[m] * scales[m]; or [1], the layer's static input scale
    dtype: torch.dtype  # the activations' own dtype: the linear layer's output dtype
