"""Quantized linear layers, one module per weight format, behind one registry. Each format module
offers `quantize(weight, config) -> tensors` (what the builder stores), `dequantize(tensors, config)`
(the reference) and a layer class whose `forward` picks the CPU or CUDA kernel."""
from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Callable

import torch
from torch import nn

from engine.errors import InvalidParameterError
from engine.layers.quantization import fp8, int4, int8_wo, w8a8
from engine.layers.quantization.config import CALIBRATED, SCHEMES, WEIGHT_FORMATS, QuantizationConfig

# weight format -> (module with quantize/dequantize, layer class)
FORMATS: dict[str, tuple[ModuleType, Callable[..., nn.Module]]] = {
    "int8_wo": (int8_wo, int8_wo.Int8WeightOnlyLinear),
    "int4": (int4, int4.Int4WeightOnlyLinear),
    "w8a8": (w8a8, w8a8.W8A8Linear),
    "fp8": (fp8, fp8.Fp8Linear),
}

# Device checks per format: an engine that cannot run here fails at load with the reason.
DEVICE_CHECKS: dict[str, Callable[[torch.device], None]] = {"fp8": fp8.check_device}


def quantized_linear(in_features: int, out_features: int, bias: bool, config: QuantizationConfig) -> nn.Module:
    return FORMATS[config.weight_format][1](in_features, out_features, bias, config)


def quantize_weight(weight: torch.Tensor, config: QuantizationConfig) -> dict[str, torch.Tensor]:
    """weight [out, in] -> the tensors the format stores, by parameter name (qweight, scales, ...)."""
    return FORMATS[config.weight_format][0].quantize(weight, config)


def dequantize_weight(tensors: dict[str, torch.Tensor], config: QuantizationConfig, in_features: int) -> torch.Tensor:
    return FORMATS[config.weight_format][0].dequantize(tensors, config, in_features)


def check_device(config: QuantizationConfig, device: torch.device) -> None:
    check = DEVICE_CHECKS.get(config.weight_format)
    if check is not None:
        check(device)
    needs_triton = config.weight_format in ("int8_wo", "int4")
    if device.type == "cuda" and needs_triton and importlib.util.find_spec("triton") is None:
        raise InvalidParameterError("quantization", f"{config.scheme} on CUDA needs Triton, which is not installed")


def is_quantized_linear(module: nn.Module) -> bool:
    return isinstance(module, tuple(cls for _, cls in FORMATS.values()))


__all__ = ["CALIBRATED", "SCHEMES", "WEIGHT_FORMATS", "QuantizationConfig", "quantized_linear", "quantize_weight",
           "dequantize_weight", "check_device", "is_quantized_linear"]
