"""FP8 (W8A8, e4m3): weights in float8_e4m3fn with one scale per tensor or per output channel,
activations quantized to e4m3 at run time (one Triton kernel on CUDA, triton/fp8_quant.py;
quantize_per_token / quantize_static here are its reference; or, handed over as Fp8Activations, by the
RMSNorm or SiLU-and-mul kernel that produced them); torch._scaled_mm multiplies. Hopper and Ada
(CUDA compute capability >= 8.9) only: check_device says so clearly anywhere else.

Activation scales (QuantizationConfig.fp8_activations): "token", one per token from its own amax, with
the row-wise scaled GEMM; or "tensor", one static `input_scale` per layer that the builder calibrated
(TensorRT-LLM's fp8 recipe), with per-tensor weights: cuBLASLt's tensor-wise fp8 GEMM, 7-15% faster on
the 7B shapes (docs/benchmarks.md), and no amax pass. Inputs beyond the calibrated range saturate at 448.

Stored: `qweight` float8_e4m3fn [out, in], `scales` float32 [out] (per-tensor granularity stores the
one scale in every entry, so fused q/k/v or gate/up keep each part's own scale; the builder quantizes a
fused layer as one tensor, so its parts share it), with static activations `input_scale` float32 [1].
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
    return quantize_static(x, scales), scales


def quantize_static(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x: [tokens, in], scale: float32 broadcasting to it -> e4m3 codes of x / scale, saturated at +-448."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def calibrated_input_scale(x: torch.Tensor) -> torch.Tensor:
    """A static input scale (float32 [1]) from the activations a layer saw on calibration samples: their
    largest magnitude maps to 448."""
    return (x.abs().amax().float().clamp(min=1e-12) / FP8_MAX).reshape(1)


class Fp8Linear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool, config: QuantizationConfig):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.qweight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8), requires_grad=False)
        self.scales = nn.Parameter(torch.empty(out_features, dtype=torch.float32), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.static_input = config.static_fp8_inputs
        if self.static_input:
            self.input_scale = nn.Parameter(torch.ones(1, dtype=torch.float32), requires_grad=False)

    def prepare(self) -> None:
        """Once loaded: a tensor-wise GEMM scales by one weight scale, so a static layer's entries (a fused
        layer's parts) must all hold the same one, as the builder writes them."""
        if self.static_input and not bool((self.scales == self.scales[0]).all()):
            raise ValueError("fp8 with static activation scales needs one weight scale per layer; this "
                             "checkpoint's fused q/k/v or gate/up parts have different ones")

    def fp8_input(self) -> bool | torch.Tensor:
        # On CUDA the RMSNorm or SiLU-and-mul kernel before this layer quantizes its input.
        return self.input_scale if self.static_input else True

    def project(self, x: torch.Tensor | Fp8Activations) -> torch.Tensor:
        # x: [tokens, in] -> [tokens, out]
        return self._matmul(x, float_out=False)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        # A tensor-wise GEMM writes float32 itself (torch's row-wise one only bfloat16): no [tokens, vocab]
        # bfloat16 copy to write, read back and widen (~0.1 ms of a 7B decode step at 512 sequences).
        if self.static_input and x.is_cuda:
            return self._matmul(x, float_out=True)
        return super().logits(x)

    def _matmul(self, x: torch.Tensor | Fp8Activations, float_out: bool) -> torch.Tensor:
        if isinstance(x, Fp8Activations):
            xq, x_scales, dtype = x
        elif not x.is_cuda:  # only the builder's scoring on a CPU gets here: engines refuse fp8 off CUDA
            return self.reference(x)
        else:
            from engine.layers.quantization.triton import fp8_quant

            dtype = x.dtype
            if self.static_input:
                xq, x_scales = fp8_quant.fp8_quantize_static(x, self.input_scale), self.input_scale
            else:  # quantize_per_token's result, in one kernel
                xq, x_scales = fp8_quant.fp8_quantize_per_token(x)
        out_dtype = dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        # static: tensor-wise (one scale each side; the weight's entries all hold it); else row-wise,
        # per token x per output channel
        if self.static_input:
            x_scales, w_scales = x_scales.view(()), self.scales[0]
        else:
            w_scales = self.scales.float()[None, :]
        y = torch._scaled_mm(xq, self.qweight.t(), scale_a=x_scales, scale_b=w_scales,
                             out_dtype=torch.float32 if float_out else out_dtype)
        y = y if float_out else y.to(dtype)
        return y if self.bias is None else y + self.bias

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        if self.static_input:
            xq, x_scales = quantize_static(x, self.input_scale), self.input_scale
        else:
            xq, x_scales = quantize_per_token(x)
        w = dequantize({"qweight": self.qweight, "scales": self.scales})
        return F.linear((xq.float() * x_scales).to(x.dtype), w.to(x.dtype), self.bias)
