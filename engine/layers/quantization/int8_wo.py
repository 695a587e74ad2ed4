"""W8A16: int8 weights, one symmetric scale per output channel; activations stay in the model dtype.

Stored: `qweight` int8 [out, in], `scales` [out]. CUDA multiplies with the Triton W8A16 kernels: a
GEMV for decode's few rows, a tensor-core GEMM above (torch._weight_int8pack_mm is ~10x slower than
bf16 there). CPU uses torch's packed int8 kernel for
bfloat16 activations, where it beats a bf16 matmul; for float32 that kernel is 10-20x slower than
dequantize-then-matmul (measured on this project's 2-core CI machine), so float32 dequantizes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.layers.linear_base import LinearBase
from engine.layers.quantization.config import QuantizationConfig


def quantize(weight: torch.Tensor, config: QuantizationConfig) -> dict[str, torch.Tensor]:
    # weight: [out, in] float -> round to nearest, per output channel
    w = weight.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    qweight = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return {"qweight": qweight, "scales": scales}


def dequantize(tensors: dict[str, torch.Tensor], config: QuantizationConfig | None = None,
               in_features: int | None = None) -> torch.Tensor:
    return tensors["qweight"].float() * tensors["scales"].float()[:, None]


class Int8WeightOnlyLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool, config: QuantizationConfig):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.qweight = nn.Parameter(torch.empty(out_features, in_features, dtype=torch.int8), requires_grad=False)
        self.scales = nn.Parameter(torch.empty(out_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    def project(self, x: torch.Tensor) -> torch.Tensor:
        # x: [tokens, in] -> [tokens, out]
        if x.is_cuda:
            from engine.layers.quantization.triton.w8a16 import w8a16_matmul
            from engine.layers.quantization.triton.w8a16_gemv import prefers_gemv, w8a16_gemv

            matmul = w8a16_gemv if prefers_gemv(x.shape[0]) else w8a16_matmul
            y = matmul(x, self.qweight, self.scales)
        elif x.dtype == torch.bfloat16:
            y = torch._weight_int8pack_mm(x, self.qweight, self.scales.to(x.dtype))
        else:
            return self.reference(x)
        return y if self.bias is None else y + self.bias

    def gated_gemv(self, x: torch.Tensor) -> torch.Tensor | None:
        if x.is_cuda and self.bias is None:
            from engine.layers.quantization.triton.w8a16_gemv import prefers_gemv, w8a16_gemv

            if prefers_gemv(x.shape[0]):
                return w8a16_gemv(x, self.qweight, self.scales, gated=True)
        return None

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Dequantize, then a plain matmul: what every kernel must agree with."""
        w = dequantize({"qweight": self.qweight, "scales": self.scales}).to(x.dtype)
        return F.linear(x, w, self.bias)
