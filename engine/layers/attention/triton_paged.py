"""Paged attention for CUDA: the new K/V are stored by one Triton kernel (which also applies RoPE to q and
k when given the rotary tables), then one Triton kernel attends every query of the step (prefill chunks
and decodes alike) over its sequence's cache blocks; a decode-only batch too small to fill the GPU splits
each sequence's keys over several programs instead, merging their partial results in the same launch,
and rotates q and stores the new K/V itself (NewKV in triton/paged_attention.py).

Its launches depend only on the batch's shape, never on cache contents, and it makes no host syncs,
so decode steps built on it are captured in CUDA graphs. An fp8 cache is quantized by the store kernel and
read back by the attention kernel, its per-layer scales passed as scalar arguments.

Fresh prompts at the batch's end (AttentionMetadata.fresh: nothing of theirs cached before this step) are
attended over this step's own K/V by fused attention kernels instead (prompt_attention.py; k is then rotated
in place as it is stored), the rest of the batch by the paged kernels: the scheduler puts running
sequences (decodes, later chunks of a prompt) first and new prompts last."""
from __future__ import annotations

import torch

from engine.layers.attention.metadata import AttentionMetadata
from engine.layers.attention.prompt_attention import attends_fresh_prompts, causal_prompt_attention
from engine.layers.rotary import RotaryEmbedding


class TritonPagedAttention:
    supports_cuda_graphs = True

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float):
        # Imported here: triton is needed only where this backend runs (CUDA machines, kernel tests).
        from engine.layers.attention.triton.kv_store import store_kv
        from engine.layers.attention.triton.paged_attention import NewKV, paged_attention
        from engine.layers.attention.triton.rope_store_kv import rope_store_kv

        self._store_kv, self._rope_store_kv = store_kv, rope_store_kv
        self._new_kv, self._paged_attention = NewKV, paged_attention
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                 meta: AttentionMetadata, k_scale: float = 1.0, v_scale: float = 1.0,
                 rotary: RotaryEmbedding | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        # q: [tokens, heads, head_dim]; k, v: [tokens, kv_heads, head_dim]; positions: [tokens]
        # kv_cache: [2, num_blocks, block_size, kv_heads, head_dim], q's dtype or fp8 (scaled by k/v_scale)
        fresh_apart = meta.fresh is not None and attends_fresh_prompts(q.dtype, q.device, self.head_dim)
        new_kv = None
        if rotary is None:
            self._store_kv(k, v, kv_cache[0], kv_cache[1], meta.slot_mapping, k_scale, v_scale)
        elif fresh_apart:  # the fresh prompts are attended from k itself, so it is left rotated
            self._rope_store_kv(q, k, v, kv_cache[0], kv_cache[1], meta.slot_mapping, positions, rotary.cos,
                                rotary.sin, k_scale, v_scale, rotate_k=True)
        else:  # RoPE and the store inside the split decode kernel, else in one kernel before attention
            new_kv = self._new_kv(k, v, meta.slot_mapping, positions, rotary.cos, rotary.sin)
        if fresh_apart:
            return self._attend_fresh_apart(q, k, v, kv_cache, meta, k_scale, v_scale)
        return self._paged_attention(q, kv_cache[0], kv_cache[1], meta.block_tables, meta.context_lens,
                                     meta.query_start, meta.max_query_len, self.scale,
                                     k_scale=k_scale, v_scale=v_scale, new_kv=new_kv,
                                     decode_seqs=meta.leading_decodes)

    def _attend_fresh_apart(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                            meta: AttentionMetadata, k_scale: float, v_scale: float) -> torch.Tensor:
        # q, k: rotated; this step's K/V already cached
        t0, rest = meta.fresh.first_token, meta.block_tables.shape[0] - meta.fresh.seqs
        cu_seqlens = meta.derived.get("fresh_cu_seqlens")
        if cu_seqlens is None:  # the first layer of the step makes it; the others reuse it
            cu_seqlens = meta.derived["fresh_cu_seqlens"] = meta.query_start[rest:] - t0
        if t0 == 0:
            return causal_prompt_attention(q, k, v, meta.fresh.lens, cu_seqlens, self.scale)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        self._paged_attention(q[:t0], kv_cache[0], kv_cache[1], meta.block_tables[:rest], meta.context_lens[:rest],
                              meta.query_start[:rest + 1], meta.max_query_len, self.scale, out=out[:t0],
                              k_scale=k_scale, v_scale=v_scale, decode_seqs=min(meta.leading_decodes, rest))
        causal_prompt_attention(q[t0:], k[t0:], v[t0:], meta.fresh.lens, cu_seqlens, self.scale, out=out[t0:])
        return out
