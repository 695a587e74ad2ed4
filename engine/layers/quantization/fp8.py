"""FP8 (W8A8, e4m3): weights in float8_e4m3fn with one scale per tensor or per output channel,
activations quantized to e4m3 per token at run time (one Triton kernel on CUDA,
triton/fp8_quant.py; quantize_per_token here is its reference; or, handed over as Fp8Activations, by the
RMSNorm or SiLU-and-mul kernel that produced them); torch._scaled_mm multiplies. Hopper and Ada
(CUDA compute capability >= 8.9) only: check_device says so clearly anywhere else.

Stored: `qweight` float8_e4m3fn [out, in], `scales` float32 [out] (per-tensor granularity stores the
one scale in every entry, so fused q/k/v or gate/up keep each part's own scale).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import InvalidParameterError
from engine.layers.fp8_activations import Fp8Activations
from engine.layers.linear_base import LinearBase
from engine.layers.quantization.config import QuantizationConfig

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
MIN_CAPABILITY = (8, 9)


def check_device(device: torch.device) -> None:
    if device.type != "cuda":
        raise InvalidParameterError("quantization", f"fp8 needs a CUDA GPU of compute capability >= 8.9 "
                                                    f"(Ada, Hopper or newer); this engine was asked to run on {device}")
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        raise InvalidParameterError("quantization", f"fp8 needs CUDA compute capability >= 8.9; "
                                                    f"{name} has {capability[0]}.{capability[1]}")


def quantize(weight: torch.Tensor, config: QuantizationConfig) -> dict[str, torch.Tensor]:
    w = weight.float()
    if config.fp8_granularity == "tensor":
        scales = (w.abs().amax().clamp(min=1e-12) / FP8_MAX).expand(w.shape[0]).clone()
    else:
        scales = w.abs().amax(dim=1).clamp(min=1e-12) / FP8_MAX
    qweight = (w / scales[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return {"qweight": qweight, "scales": scales}


def dequantize(tensors: dict[str, torch.Tensor], config: QuantizationConfig | None = None,
               in_features: int | None = None) -> torch.Tensor:
    return tensors["qweight"].float() * tensors["scales"].float()[:, None]


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [tokens, in] -> (e4m3 [tokens, in], float32 scales [tokens, 1])."""
    scales = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scales).clamp(-FP8_MAX, FP8_MAX).to(FP8), scales


class Fp8Linear(LinearBase):
    takes_fp8_activations = True  # on CUDA, from the RMSNorm or SiLU-and-mul kernel before it

    def __init__(self, in_features: int, out_features: int, bias: bool, config: QuantizationConfig):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.qweight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8), requires_grad=False)
        self.scales = nn.Parameter(torch.empty(out_features, dtype=torch.float32), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    def project(self, x: torch.Tensor | Fp8Activations) -> torch.Tensor:
        # x: [tokens, in] -> [tokens, out]; row-wise scaled matmul (per-token x per-channel scales)
        if isinstance(x, Fp8Activations):
            xq, x_scales, dtype = x
        elif not x.is_cuda:  # only the builder's scoring on a CPU gets here: engines refuse fp8 off CUDA
            return self.reference(x)
        else:
            from engine.layers.quantization.triton.fp8_quant import fp8_quantize_per_token

            (xq, x_scales), dtype = fp8_quantize_per_token(x), x.dtype  # quantize_per_token's result, in one kernel
        out_dtype = dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        y = torch._scaled_mm(xq, self.qweight.t(), scale_a=x_scales, scale_b=self.scales.float()[None, :],
                             out_dtype=out_dtype).to(dtype)
        return y if self.bias is None else y + self.bias

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        xq, x_scales = quantize_per_token(x)
        w = dequantize({"qweight": self.qweight, "scales": self.scales})
        return F.linear((xq.float() * x_scales).to(x.dtype), w.to(x.dtype), self.bias)
