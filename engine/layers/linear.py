"""Linear layers behind one interface: unquantized here, quantized formats in
engine/layers/quantization/. The scheme comes from the engine's config (written by the builder),
never from a file name."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.layers.linear_base import LinearBase
from engine.layers.quantization import QuantizationConfig, quantized_linear


class UnquantizedLinear(LinearBase):
    """y = x W^T + b, with W stored [out_features, in_features] as in HF checkpoints."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    def project(self, x: torch.Tensor) -> torch.Tensor:
        # x: [tokens, in_features] -> [tokens, out_features]
        if x.is_cuda:
            from engine.layers.triton.gemv import gemv, prefers_gemv  # triton: CUDA machines only

            if prefers_gemv(x, self.weight):  # decode's few rows: see gemv.py
                y = gemv(x, self.weight)
                return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)

    def gated_gemv(self, x: torch.Tensor) -> torch.Tensor | None:
        if x.is_cuda and self.bias is None:
            from engine.layers.triton.gemv import gemv, prefers_gemv

            if prefers_gemv(x, self.weight):
                return gemv(x, self.weight, gated=True)
        return None


def make_linear(in_features: int, out_features: int, bias: bool = False,
                quantization: QuantizationConfig | None = None) -> nn.Module:
    if quantization is None:
        return UnquantizedLinear(in_features, out_features, bias=bias)
    return quantized_linear(in_features, out_features, bias, quantization)
