"""fp8 (e4m3) test values that Triton's interpreter stores exactly.

The interpreter (Triton 3.9 here) loads, stores and widens e4m3 exactly, but its float32 -> e4m3 cast does
not round to nearest even: it rounds ties away from zero, loses the carry when rounding up crosses a power
of two (124.0 -> 64.0) and truncates below 2^-6. So kernel tests on CPU store values that need no
rounding: e4m3 values times a power-of-two scale, plus values far past the range (saturated to +-448 by
the kernel before the cast). Rounding itself is checked on CUDA (tests marked gpu).
"""
from __future__ import annotations

import torch

from engine.layers.attention.kv_quant import KV_FP8


def e4m3_values(shape: tuple[int, ...], scale: float, g: torch.Generator) -> torch.Tensor:
    """float32 values that are exactly e4m3 values times `scale` (every finite e4m3 value, subnormals
    included, is equally likely), a fifth of them replaced by +-1e4 * scale, far past the range."""
    x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).view(KV_FP8).float()
    x = torch.where(torch.isnan(x), 0.0, x)
    far = torch.rand(shape, generator=g) < 0.2
    return torch.where(far, torch.sign(x + 0.5) * 1e4, x) * scale
