"""Attention backends behind one interface: each takes this step's queries, keys and values for all
scheduled tokens, writes the new K/V into the paged cache and attends over each sequence's blocks.

A backend is picked by name from ATTENTION_BACKENDS; the CUDA-fast ones (paged decode kernel,
varlen prefill) are added beside the portable reference here.
"""
from engine.layers.attention.metadata import AttentionMetadata
from engine.layers.attention.torch_paged import TorchPagedAttention

ATTENTION_BACKENDS = {"torch_paged": TorchPagedAttention}

__all__ = ["ATTENTION_BACKENDS", "AttentionMetadata", "TorchPagedAttention"]
