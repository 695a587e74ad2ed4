"""SmoothQuant (Xiao et al., 2023): activations have a few outlier channels that per-token int8
cannot represent; dividing each input channel by s_j = max|X_j|^alpha / max|W_j|^(1-alpha) and
multiplying the weight's column j by it moves that difficulty into the weights, exactly (XW^T =
(X/s)(W*s)^T). The division is folded into the op before the linear, so it costs nothing at run time:

    qkv_proj   <- attn_norm weight          gate_up_proj <- mlp_norm weight
    down_proj  <- the `up` rows of gate_up  o_proj <- the `v` rows of qkv (only without GQA: with
                                              grouped heads one v channel feeds several o_proj inputs)
"""
from __future__ import annotations

import torch
from torch import nn

from builder.quantize.common import to_quantized
from builder.quantize.layerwise import LINEARS, Batch, layer_inputs, replace_submodule, submodule
from engine.layers.quantization import QuantizationConfig


def smoothing_factors(act_max: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """s [in] for activations whose per-channel max magnitude is act_max [in] and weight [out, in]."""
    w_max = weight.abs().amax(dim=0).float().clamp(min=1e-5)
    return (act_max.float().clamp(min=1e-5).pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)


def preceding_rows(layer: nn.Module, name: str) -> tuple[torch.Tensor, slice] | None:
    """(tensor, slice of its first dim) that produces `name`'s input channels one to one, or None."""
    attn, mlp = layer.attn, layer.mlp
    if name == "attn.qkv_proj":
        return layer.attn_norm.weight, slice(None)
    if name == "mlp.gate_up_proj":
        return layer.mlp_norm.weight, slice(None)
    if name == "mlp.down_proj":
        n = mlp.intermediate_size
        return mlp.gate_up_proj.weight, slice(n, 2 * n)
    if name == "attn.o_proj" and attn.num_heads == attn.num_kv_heads:
        return attn.qkv_proj.weight, slice(attn.q_size + attn.kv_size, attn.q_size + 2 * attn.kv_size)
    return None


@torch.no_grad()
def quantize_layer(layer: nn.Module, x: torch.Tensor, batch: Batch, config: QuantizationConfig) -> None:
    inputs = layer_inputs(layer, x, batch)
    # Smooth every linear first (on float weights), then quantize: o_proj's and down_proj's smoothing
    # rescale rows of qkv and gate_up, which must happen before those are quantized.
    for name in ("attn.o_proj", "mlp.down_proj", "attn.qkv_proj", "mlp.gate_up_proj"):
        before = preceding_rows(layer, name)
        if before is None:
            continue
        linear = submodule(layer, name)
        s = smoothing_factors(inputs[name].abs().amax(dim=0), linear.weight, config.alpha)
        linear.weight.mul_(s.to(linear.weight.dtype)[None, :])
        tensor, rows = before
        if tensor.dim() == 1:
            tensor[rows].div_(s.to(tensor.dtype))
        else:
            tensor[rows].div_(s.to(tensor.dtype)[:, None])
        if name == "attn.o_proj" and layer.attn.qkv_proj.bias is not None:  # v's bias scales with its rows
            layer.attn.qkv_proj.bias[rows].div_(s.to(tensor.dtype))
        if name == "mlp.down_proj" and layer.mlp.gate_up_proj.bias is not None:
            layer.mlp.gate_up_proj.bias[rows].div_(s.to(tensor.dtype))
    for name in LINEARS:
        replace_submodule(layer, name, to_quantized(submodule(layer, name), config))
