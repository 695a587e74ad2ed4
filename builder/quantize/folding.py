"""Folding per-input-channel factors into the op before a linear, as SmoothQuant and AWQ both do:
column j of the linear's weight times s_j, the op that produces input channel j divided by s_j, so
the layer's float function is unchanged (up to rounding) and the engine runs plain layers.

    qkv_proj   <- attn_norm weight          gate_up_proj <- mlp_norm weight
    down_proj  <- the `up` rows of gate_up  o_proj <- the `v` rows of qkv (only without GQA: with
                                              grouped heads one v channel feeds several o_proj inputs)
"""
from __future__ import annotations

import torch
from torch import nn

from builder.quantize.layerwise import submodule

# Where the preceding tensor is a linear's weight, that linear's bias rows scale with it.
_PRODUCER = {"attn.o_proj": "attn.qkv_proj", "mlp.down_proj": "mlp.gate_up_proj"}


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
def apply_scales(layer: nn.Module, name: str, s: torch.Tensor) -> None:
    """Weight columns of `name` times s [in], the op producing its input divided by s."""
    before = preceding_rows(layer, name)
    if before is None:
        raise ValueError(f"{name}: no op before it produces its input channels one to one")
    linear = submodule(layer, name)
    linear.weight.mul_(s.to(linear.weight.dtype)[None, :])
    tensor, rows = before
    if tensor.dim() == 1:  # a norm's weight
        tensor[rows].div_(s.to(tensor.dtype))
        return
    tensor[rows].div_(s.to(tensor.dtype)[:, None])
    bias = submodule(layer, _PRODUCER[name]).bias
    if bias is not None:
        bias[rows].div_(s.to(bias.dtype))
