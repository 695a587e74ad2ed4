"""Running a model one decoder layer at a time over calibration samples, as AWQ, GPTQ and SmoothQuant
need: the inputs each linear layer sees, and the layer's output fed to the next layer once it is
quantized (so later layers calibrate against the errors of earlier ones, as the GPTQ paper does).

Uses the engine's own model and attention: the samples are N sequences of L tokens, prefilled at once
into a scratch KV cache.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from engine.layers.attention import AttentionMetadata

# The linear layers of a decoder layer, in the order data flows through them.
LINEARS = ("attn.qkv_proj", "attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
BLOCK_SIZE = 16


@dataclass
class Batch:
    """N calibration sequences of L tokens, flattened to [N*L] as the engine runs them."""

    positions: torch.Tensor  # [N*L]
    kv_cache: torch.Tensor  # [2, blocks, BLOCK_SIZE, kv_heads, head_dim], scratch, reused by every layer
    meta: AttentionMetadata
    num_seqs: int
    seq_len: int


def make_batch(model: nn.Module, num_seqs: int, seq_len: int) -> Batch:
    cfg = model.cfg
    device, dtype = model.device, model.dtype
    blocks_per_seq = -(-seq_len // BLOCK_SIZE)
    kv_cache = torch.zeros(2, num_seqs * blocks_per_seq, BLOCK_SIZE, cfg.num_kv_heads, cfg.head_dim,
                           dtype=dtype, device=device)
    tables = torch.arange(num_seqs * blocks_per_seq, device=device).view(num_seqs, blocks_per_seq)
    meta = AttentionMetadata.prefill(tables, seq_len, BLOCK_SIZE)
    pos = torch.arange(seq_len, device=device)
    return Batch(pos.repeat(num_seqs), kv_cache, meta, num_seqs, seq_len)


def run_layer(layer: nn.Module, x: torch.Tensor, batch: Batch) -> torch.Tensor:
    out, residual = layer(x, None, batch.positions, batch.kv_cache, batch.meta)
    return out + residual  # the residual stream after the layer


def run_attention(layer: nn.Module, normed: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The attention block alone (its input already normed): what AWQ scores qkv scales by."""
    return layer.attn(normed, batch.positions, batch.kv_cache, batch.meta)


def submodule(layer: nn.Module, name: str) -> nn.Module:
    return layer.get_submodule(name)


def replace_submodule(layer: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(layer.get_submodule(parent) if parent else layer, child, new)


@contextmanager
def capture_inputs(layer: nn.Module, names: tuple[str, ...] = LINEARS) -> Iterator[dict[str, torch.Tensor]]:
    """While inside, every forward of the named linears records its input: {name: [tokens, in]}."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [submodule(layer, name).register_forward_pre_hook(
        lambda _m, args, name=name: seen.__setitem__(name, args[0].detach())) for name in names]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def layer_inputs(layer: nn.Module, x: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
    """What each linear of `layer` sees when the layer runs on `x`."""
    with capture_inputs(layer) as seen:
        run_layer(layer, x, batch)
    return dict(seen)
