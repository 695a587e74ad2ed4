"""Portable paged attention in plain PyTorch (CPU and CUDA): gathers each sequence's blocks and runs
scaled-dot-product attention with a causal mask offset by what is already cached.

It is the reference the fast CUDA backend is tested against; it favours clarity over speed, and its
shapes follow the step's longest context, so it is never captured in a CUDA graph. An fp8 cache
(kv_quant.py) is written quantized and read back in the query's dtype after the gather.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.layers.attention.kv_quant import KV_FP8, check_kv_scales, quantize_kv
from engine.layers.attention.metadata import AttentionMetadata
from engine.layers.rotary import RotaryEmbedding


class TorchPagedAttention:
    supports_cuda_graphs = False

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float):
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                 meta: AttentionMetadata, k_scale: float = 1.0, v_scale: float = 1.0,
                 rotary: RotaryEmbedding | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        # q: [tokens, heads, head_dim]; k, v: [tokens, kv_heads, head_dim]; positions: [tokens]
        # kv_cache: [2, num_blocks, block_size, kv_heads, head_dim], q's dtype or KV_FP8 (scaled by k/v_scale)
        check_kv_scales(kv_cache.dtype, k_scale, v_scale)
        if rotary is not None:
            q, k = rotary(positions, q, k)
        k_cache, v_cache = kv_cache[0], kv_cache[1]
        if kv_cache.dtype == KV_FP8:
            k, v = quantize_kv(k, k_scale), quantize_kv(v, v_scale)
        self._store(k_cache, k, meta.slot_mapping)
        self._store(v_cache, v, meta.slot_mapping)
        masks = meta.derived.get("torch_paged")
        if masks is None:  # the first layer of the step builds them; the others reuse them
            masks = meta.derived["torch_paged"] = _masks(meta)

        n_seqs = meta.block_tables.shape[0]
        ctx = meta.max_context_len
        # (reshape: the gathered blocks keep the cache's stride order, which need not be slot-major)
        keys = k_cache[meta.block_tables].reshape(n_seqs, -1, self.num_kv_heads, self.head_dim)[:, :ctx].to(q.dtype)
        values = v_cache[meta.block_tables].reshape(n_seqs, -1, self.num_kv_heads, self.head_dim)[:, :ctx].to(q.dtype)
        # Slots past a sequence's end (block padding, reused blocks) may hold anything, NaN included;
        # a masked NaN still poisons softmax(QK^T)V, so they are zeroed, not just masked.
        keys = keys.masked_fill(~masks["key_valid"], 0.0)
        values = values.masked_fill(~masks["key_valid"], 0.0)
        queries = q[masks["query_index"]]  # [seqs, max_query_len, heads, head_dim]

        # The fp8 scales are folded in as the Triton kernel folds them: k_scale into the score scale,
        # v_scale onto the output (softmax weights sum to 1), rather than a multiply per cached element.
        out = F.scaled_dot_product_attention(
            queries.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
            attn_mask=masks["attn_mask"], scale=self.scale * k_scale, enable_gqa=self.num_kv_heads != self.num_heads,
        )  # [seqs, heads, max_query_len, head_dim]
        out = out.transpose(1, 2)[masks["query_valid"]]  # [tokens, heads, head_dim]
        return out * v_scale if v_scale != 1.0 else out

    def _store(self, cache: torch.Tensor, new: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        # cache: [num_blocks, block_size, kv_heads, head_dim], any strides (kv_cache.py's blocks are
        # head-major); new: [tokens, kv_heads, head_dim], cache's dtype
        if cache.dtype == KV_FP8:  # index_put_ has no float8 kernel on CPU: the bytes are copied instead
            cache, new = cache.view(torch.uint8), new.view(torch.uint8)
        block_size = cache.shape[1]
        cache.index_put_((slot_mapping // block_size, slot_mapping % block_size), new)


def _masks(meta: AttentionMetadata) -> dict[str, torch.Tensor]:
    """Gather indices and masks for the padded [seqs, max_query_len] x [seqs, max_context_len] layout."""
    device = meta.context_lens.device
    starts, query_lens = meta.query_start[:-1].long(), (meta.query_start[1:] - meta.query_start[:-1]).long()
    context_lens = meta.context_lens.long()
    i = torch.arange(meta.max_query_len, device=device)[None, :]
    query_valid = i < query_lens[:, None]  # [seqs, max_query_len]
    # Padded query rows get position 0 so their softmax row is never empty; they are dropped after.
    query_pos = torch.where(query_valid, context_lens[:, None] - query_lens[:, None] + i, 0)
    key_pos = torch.arange(meta.max_context_len, device=device)
    return {
        "query_index": torch.where(query_valid, starts[:, None] + i, 0),
        "query_valid": query_valid,
        "attn_mask": (key_pos[None, None, :] <= query_pos[:, :, None]).unsqueeze(1),  # [seqs, 1, q, ctx]
        "key_valid": (key_pos[None, :] < context_lens[:, None])[:, :, None, None],  # [seqs, ctx, 1, 1]
    }
