"""Linear layers behind one interface. Quantized schemes add an entry to LINEAR_METHODS; the scheme
comes from the engine manifest, never from a file name."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class UnquantizedLinear(nn.Module):
    """y = x W^T + b, with W stored [out_features, in_features] as in HF checkpoints."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [tokens, in_features] -> [tokens, out_features]
        return F.linear(x, self.weight, self.bias)


LINEAR_METHODS: dict[str, Callable[..., nn.Module]] = {"none": UnquantizedLinear}


def make_linear(in_features: int, out_features: int, bias: bool = False, quantization: str = "none") -> nn.Module:
    return LINEAR_METHODS[quantization](in_features, out_features, bias=bias)
