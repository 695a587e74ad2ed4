"""Attention backends behind one interface: each takes this step's queries, keys and values for all
scheduled tokens (before RoPE when given the rotary embedding and positions: it applies it), writes the
new K/V into the paged cache and attends over each sequence's blocks.

A backend is picked by name from ATTENTION_BACKENDS; "auto" is the Triton kernels on CUDA and the
portable PyTorch reference elsewhere. Every backend takes a cache in the model's dtype or in fp8 with
the layer's k_scale and v_scale (kv_quant.py).
"""
from __future__ import annotations

import torch

from engine.layers.attention.metadata import AttentionMetadata, FreshPrompts
from engine.layers.attention.torch_paged import TorchPagedAttention
from engine.layers.attention.triton_paged import TritonPagedAttention

ATTENTION_BACKENDS = {"torch_paged": TorchPagedAttention, "triton_paged": TritonPagedAttention}
BACKEND_CHOICES = ("auto", *ATTENTION_BACKENDS)


def resolve_backend(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    return "triton_paged" if device.type == "cuda" else "torch_paged"


__all__ = ["ATTENTION_BACKENDS", "BACKEND_CHOICES", "AttentionMetadata", "FreshPrompts", "TorchPagedAttention",
           "TritonPagedAttention", "resolve_backend"]
