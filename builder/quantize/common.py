"""Turning a float linear layer into the quantized layer of the build's format."""
from __future__ import annotations

import torch
from torch import nn

from engine.layers.quantization import QuantizationConfig, quantize_weight, quantized_linear
from engine.model_runner import default_dtype


@torch.no_grad()
def to_quantized(linear: nn.Module, config: QuantizationConfig,
                 tensors: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The quantized twin of `linear` (same device, same dtype for its float parts): `tensors` when
    an algorithm chose the quantized values itself (GPTQ), else round-to-nearest of its weight."""
    weight = linear.weight
    tensors = tensors if tensors is not None else quantize_weight(weight, config)
    with torch.device(weight.device), default_dtype(weight.dtype):
        module = quantized_linear(linear.in_features, linear.out_features, linear.bias is not None, config)
    for name, value in tensors.items():
        getattr(module, name).copy_(value)
    if linear.bias is not None:
        module.bias.copy_(linear.bias)
    if hasattr(module, "prepare"):
        module.prepare()
    return module
