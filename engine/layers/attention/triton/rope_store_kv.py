"""RoPE and the KV-cache store in one kernel: rotates q in place, rotates k in registers and writes it, with
v, into its cache slot. Apart it is two launches per layer (engine/layers/triton/rotary.py, then
kv_store.py) and k makes a round trip through memory; at batch 1 each launch costs more than the bytes
it moves, 64 launches of a 7B decode step.

The arithmetic is exactly theirs: the rotation in float32 from the float32 tables, rounded once to the
activation dtype, then (fp8 cache) scaled, saturated and rounded to e4m3, so the cache and q hold the
same bits either way. One program per token, as in both: the token's cos/sin half-rows are loaded once
for all heads of q and k. A negative slot (padding) stores nothing; its q is rotated all the same.

A decode-only batch that attention splits (paged_attention_split.py) skips this kernel: the split
attention kernel rotates q and stores the new K/V itself, with the same arithmetic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.layers.attention.kv_quant import KV_FP8, KV_FP8_MAX, check_kv_scales
from engine.layers.attention.triton.kv_store import check_store_operands, store_at_slot
from engine.layers.triton import next_power_of_2
from engine.layers.triton.pdl import pdl_launch, wait_for_previous
from engine.layers.triton.rotary import _cos_sin, _rotate, _rotated, check_rope_operands


@triton.jit
def _rope_store_kv_kernel(q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, pos_ptr, cos_ptr, sin_ptr,
                          k_inv_scale, v_inv_scale, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                          stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch, stride_cos, stride_sin,
                          Q_HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HALF: tl.constexpr,
                          BLOCK_SIZE: tl.constexpr, BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr,
                          BLOCK_HALF: tl.constexpr, FP8: tl.constexpr, FP8_MAX: tl.constexpr,
                          K_IN_PLACE: tl.constexpr, USE_PDL: tl.constexpr):
    # q: [tokens, Q_HEADS, 2 * HALF]; k, v: [tokens, KV_HEADS, 2 * HALF];
    # k_cache, v_cache: [num_blocks, BLOCK_SIZE, KV_HEADS, 2 * HALF]
    t = tl.program_id(0).to(tl.int64)
    # Positions, slots and the tables are the step's inputs, copied in before it (pdl.py).
    pos = tl.load(pos_ptr + t)
    slot = tl.load(slot_ptr + t)
    halves = tl.arange(0, BLOCK_HALF)
    c, s = _cos_sin(cos_ptr, sin_ptr, pos, stride_cos, stride_sin, halves, HALF)
    wait_for_previous(USE_PDL)
    _rotate(q_ptr, stride_qt, stride_qh, t, c, s, halves, Q_HEADS, HALF, BLOCK_QH, BLOCK_HALF)

    if slot < 0:
        return
    heads = tl.arange(0, BLOCK_KH)[:, None]
    mask = (heads < KV_HEADS) & (halves[None, :] < HALF)  # [BLOCK_KH, BLOCK_HALF]
    k_ptrs = k_ptr + t * stride_kt + heads * stride_kh + halves[None, :]
    k1 = tl.load(k_ptrs, mask=mask, other=0.0).to(tl.float32)
    k2 = tl.load(k_ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
    r1, r2 = _rotated(k1, k2, c, s)
    # Rounded to the activation dtype first, as the separate RoPE kernel's store does.
    r1, r2 = r1.to(k_ptr.dtype.element_ty), r2.to(k_ptr.dtype.element_ty)
    if K_IN_PLACE:
        tl.store(k_ptrs, r1, mask=mask)
        tl.store(k_ptrs + HALF, r2, mask=mask)
    v_ptrs = v_ptr + t * stride_vt + heads * stride_vh + halves[None, :]
    v1 = tl.load(v_ptrs, mask=mask)
    v2 = tl.load(v_ptrs + HALF, mask=mask)
    k_offsets = heads * stride_kch + halves[None, :]
    v_offsets = heads * stride_vch + halves[None, :]
    store_at_slot(k_cache_ptr, v_cache_ptr, slot, r1, v1, k_offsets, v_offsets, mask, stride_kcb, stride_kcs,
                  stride_vcb, stride_vcs, k_inv_scale, v_inv_scale, BLOCK_SIZE, FP8, FP8_MAX)
    store_at_slot(k_cache_ptr, v_cache_ptr, slot, r2, v2, k_offsets + HALF, v_offsets + HALF, mask, stride_kcb,
                  stride_kcs, stride_vcb, stride_vcs, k_inv_scale, v_inv_scale, BLOCK_SIZE, FP8, FP8_MAX)


def rope_store_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  slot_mapping: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  k_scale: float = 1.0, v_scale: float = 1.0, rotate_k: bool = False) -> None:
    """apply_rope_(q, k, positions, cos, sin) then store_kv(k, v, k_cache, v_cache, slot_mapping, k_scale,
    v_scale), in one launch, with the same results, except that k itself is left unrotated (only its
    cache slot gets the rotated values) unless rotate_k (an attention that reads this step's keys from k,
    prompt_attention.py, wants them rotated; a padding token's k is left as it is). Shapes, dtypes and
    limits are theirs."""
    check_rope_operands(q, k, positions, cos, sin)
    check_store_operands(k, v, k_cache, v_cache, slot_mapping)
    check_kv_scales(k_cache.dtype, k_scale, v_scale)
    tokens, heads, head_dim = q.shape
    kv_heads = k.shape[1]
    if tokens == 0:
        return
    half = head_dim // 2
    _rope_store_kv_kernel[(tokens,)](
        q, k, v, k_cache, v_cache, slot_mapping, positions, cos, sin, 1.0 / k_scale, 1.0 / v_scale,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), cos.stride(0), sin.stride(0),
        Q_HEADS=heads, KV_HEADS=kv_heads, HALF=half, BLOCK_SIZE=k_cache.shape[1],
        BLOCK_QH=next_power_of_2(heads), BLOCK_KH=next_power_of_2(kv_heads), BLOCK_HALF=next_power_of_2(half),
        FP8=k_cache.dtype == KV_FP8, FP8_MAX=KV_FP8_MAX, K_IN_PLACE=bool(rotate_k), num_warps=4,
        **pdl_launch(q.device))
