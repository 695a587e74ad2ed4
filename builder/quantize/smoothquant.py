"""SmoothQuant (Xiao et al., 2023): activations have a few outlier channels that per-token int8
cannot represent; dividing each input channel by s_j = max|X_j|^alpha / max|W_j|^(1-alpha) and
multiplying the weight's column j by it moves that difficulty into the weights, exactly (XW^T =
(X/s)(W*s)^T). The division is folded into the op before the linear (folding.py), so it costs
nothing at run time.
"""
from __future__ import annotations

import torch
from torch import nn

from builder.quantize.common import to_quantized
from builder.quantize.folding import apply_scales, preceding_rows
from builder.quantize.layerwise import LINEARS, Batch, layer_inputs, replace_submodule, submodule
from engine.layers.quantization import QuantizationConfig


def smoothing_factors(act_max: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """s [in] for activations whose per-channel max magnitude is act_max [in] and weight [out, in]."""
    w_max = weight.abs().amax(dim=0).float().clamp(min=1e-5)
    return (act_max.float().clamp(min=1e-5).pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def quantize_layer(layer: nn.Module, x: torch.Tensor, batch: Batch, config: QuantizationConfig) -> None:
    inputs = layer_inputs(layer, x, batch)
    # Smooth every linear first (on float weights), then quantize: o_proj's and down_proj's smoothing
    # rescale rows of qkv and gate_up, which must happen before those are quantized.
    for name in ("attn.o_proj", "mlp.down_proj", "attn.qkv_proj", "mlp.gate_up_proj"):
        if preceding_rows(layer, name) is None:
            continue
        linear = submodule(layer, name)
        apply_scales(layer, name, smoothing_factors(inputs[name].abs().amax(dim=0), linear.weight, config.alpha))
    for name in LINEARS:
        replace_submodule(layer, name, to_quantized(submodule(layer, name), config))
