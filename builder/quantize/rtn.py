"""Round to nearest (int8_wo, int4_wo, fp8): every weight quantized on its own, no calibration."""
from __future__ import annotations

import torch
from torch import nn

from builder.quantize.common import to_quantized
from builder.quantize.layerwise import LINEARS, Batch, replace_submodule, submodule
from engine.layers.quantization import QuantizationConfig


@torch.no_grad()
def quantize_layer(layer: nn.Module, x: torch.Tensor | None, batch: Batch | None, config: QuantizationConfig) -> None:
    for name in LINEARS:
        replace_submodule(layer, name, to_quantized(submodule(layer, name), config))
