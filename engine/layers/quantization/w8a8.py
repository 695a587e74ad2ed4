"""W8A8 (SmoothQuant): int8 weights with one scale per output channel, activations quantized to int8
per token at run time (dynamic), an int8 x int8 -> int32 matmul (CUDA), rescaled to the model dtype.

The smoothing itself (moving activation outliers into the weights with per-channel factors) happens
when the engine is built: the factors are folded into the preceding RMSNorm weights or linear rows,
so at run time this layer sees already-smoothed activations. Stored: `qweight` int8 [out, in],
`scales` [out] (the weight scales).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.layers.linear_base import LinearBase
from engine.layers.quantization import int8_wo

quantize = int8_wo.quantize
dequantize = int8_wo.dequantize
CUDA_MIN_ROWS = 17  # torch._int_mm on CUDA needs more than 16 rows


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [tokens, in] -> (int8 [tokens, in], float32 scales [tokens, 1])."""
    scales = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-8) / 127.0
    return torch.round(x.float() / scales).clamp(-127, 127).to(torch.int8), scales


def int8_matmul(xq: torch.Tensor, wq_t: torch.Tensor) -> torch.Tensor:
    """int8 [m, k] @ int8 [k, n] -> [m, n]: int32 on CUDA; on CPU float32 holding the same integer sums
    (torch._int_mm there is ~15x slower than a float32 matmul on the CI machine; float32 represents
    every sum exactly up to 2^24 and rounds larger ones by < 1e-7 relative)."""
    if not xq.is_cuda:
        return xq.float() @ wq_t.float()
    m = xq.shape[0]
    if m < CUDA_MIN_ROWS:
        return torch._int_mm(F.pad(xq, (0, 0, 0, CUDA_MIN_ROWS - m)), wq_t)[:m]
    return torch._int_mm(xq, wq_t)


class W8A8Linear(int8_wo.Int8WeightOnlyLinear):
    """Stores exactly what Int8WeightOnlyLinear stores; multiplies differently (int8 activations too)."""

    gated_gemv = LinearBase.gated_gemv  # its own matmul, then silu_and_mul: not the weight-only GEMV

    def project(self, x: torch.Tensor) -> torch.Tensor:
        # x: [tokens, in] -> [tokens, out]
        xq, x_scales = quantize_per_token(x)
        acc = int8_matmul(xq, self.qweight.t())  # int32 [tokens, out]
        y = (acc.float() * x_scales * self.scales.float()[None, :]).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same arithmetic in float: quantize x per token, dequantize both, matmul."""
        xq, x_scales = quantize_per_token(x)
        w = dequantize({"qweight": self.qweight, "scales": self.scales})
        return F.linear((xq.float() * x_scales).to(x.dtype), w.to(x.dtype), self.bias)
