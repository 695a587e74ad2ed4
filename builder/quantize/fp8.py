"""FP8: weights rounded to nearest (rtn.py); with static activation scales (fp8_activations "tensor",
TensorRT-LLM's fp8 recipe), each linear's `input_scale` is calibrated too: the largest magnitude its
input reached over the calibration samples, mapped to e4m3's 448. The inputs are the float layer's
(one pass, as modelopt's max calibration); the scales depend only on them."""
from __future__ import annotations

import torch
from torch import nn

from builder.quantize import rtn
from builder.quantize.common import to_quantized
from builder.quantize.layerwise import LINEARS, Batch, layer_inputs, replace_submodule, submodule
from engine.layers.quantization import QuantizationConfig
from engine.layers.quantization.fp8 import calibrated_input_scale


@torch.no_grad()
def quantize_layer(layer: nn.Module, x: torch.Tensor | None, batch: Batch | None, config: QuantizationConfig) -> None:
    if not config.static_fp8_inputs:
        rtn.quantize_layer(layer, x, batch, config)
        return
    inputs = layer_inputs(layer, x, batch)
    for name in LINEARS:
        replace_submodule(layer, name, quantized_with_input_scale(submodule(layer, name), inputs[name], config))


def quantized_with_input_scale(linear: nn.Module, inputs: torch.Tensor, config: QuantizationConfig) -> nn.Module:
    """`linear` rounded to fp8, its static input scale calibrated on `inputs` [tokens, in]."""
    module = to_quantized(linear, config)
    module.input_scale.copy_(calibrated_input_scale(inputs))
    return module
