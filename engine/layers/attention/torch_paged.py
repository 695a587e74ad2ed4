"""Portable paged attention in plain PyTorch (CPU and CUDA): gathers each sequence's blocks and runs
scaled-dot-product attention with a causal mask offset by what is already cached.

It is the reference the fast CUDA backends are tested against; it favours clarity over speed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.layers.attention.metadata import AttentionMetadata


class TorchPagedAttention:
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float):
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                 meta: AttentionMetadata) -> torch.Tensor:
        # q: [tokens, heads, head_dim]; k, v: [tokens, kv_heads, head_dim]
        # kv_cache: [2, num_blocks, block_size, kv_heads, head_dim]
        k_cache, v_cache = kv_cache[0], kv_cache[1]
        k_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, meta.slot_mapping, v)

        n_seqs = meta.block_tables.shape[0]
        ctx = meta.max_context_len
        keys = k_cache[meta.block_tables].view(n_seqs, -1, self.num_kv_heads, self.head_dim)[:, :ctx]
        values = v_cache[meta.block_tables].view(n_seqs, -1, self.num_kv_heads, self.head_dim)[:, :ctx]
        # Slots past a sequence's end (block padding, reused blocks) may hold anything, NaN included;
        # a masked NaN still poisons softmax(QK^T)V, so they are zeroed, not just masked.
        keys = keys.masked_fill(~meta.key_valid, 0.0)
        values = values.masked_fill(~meta.key_valid, 0.0)
        queries = q[meta.query_index]  # [seqs, max_query_len, heads, head_dim]

        out = F.scaled_dot_product_attention(
            queries.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
            attn_mask=meta.attn_mask, scale=self.scale, enable_gqa=self.num_kv_heads != self.num_heads,
        )  # [seqs, heads, max_query_len, head_dim]
        return out.transpose(1, 2)[meta.query_valid]  # [tokens, heads, head_dim]
