"""Decode attention with the keys as the dot's rows: for a decode-only batch that fills the GPU unsplit
(paged_attention.decode_splits == 1), one program per (sequence, KV head) computes s^T = K q^T and
o^T = V^T p^T, where paged_attention's kernel computes s = q K^T and o = p V.

Why: a decode step has one query token, so q holds only the G heads of a KV group (1 for MHA), padded
to tl.dot's 16. With q on the left the cache tiles are the right operand, which Triton stages through
shared memory in the MMA's layout; an fp8 cache must be converted first, so each e4m3 tile went
registers -> fp16 -> shared memory -> registers (Nsight Compute, 512 sequences x 192 tokens on an H200:
250 registers a thread, 8 warps an SM, shared-store bank conflicts). With the cache tiles on the left they
are converted in the left operand's registers, and only q^T and p^T (16 columns) go through shared memory.
Measured (bench/attention_sweep.py --grid, H200; docs/benchmarks.md, session 14): over an fp8 cache 1-20%
faster than paged_attention.py's kernel with the launch it took there, up to 256 tokens (512 sequences x 192
tokens: 342 against 425 us), 3-5% slower at 1,100-2,100, and never more than 5% off each shape's best launch
of either kernel; over a bf16 cache within 4% of paged_attention.py's, and slower, so that cache keeps it.
Neither gets an fp8 cache past ~2.8 TB/s (bf16: 4.4; whole tiles unmasked, session 17): the fp8 tiles cost
per key row about what bf16 tiles do, so their half bytes do not halve the time. (A third kernel, on CUDA
cores with no dots, did no better over fp8, and worse over bf16.)

The online softmax runs down the columns (one per head of the group) in float32 with exp2, as in
paged_attention.py; keys at or past a sequence's context length are masked in the loads (other=0) and
the scores (whole tiles skip both masks), and a sequence with no context (padding) gets zeros. An fp8
cache's k_scale is folded into qk_scale and v_scale applied to the output, as there.
"""
from __future__ import annotations

import triton
import triton.language as tl

from engine.layers.triton.pdl import wait_for_previous


@triton.jit
def _key_tile_by_rows(q_t, m_i, l_i, acc_t, start, ctx, bt_row, k_head, v_head, qk_scale,
                      stride_kb, stride_ks, stride_vb, stride_vs, dims, d_ok,
                      BLOCK_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
                      MASKED: tl.constexpr, EVEN_D: tl.constexpr):
    # One online-softmax step over key positions start .. start + BLOCK_N - 1; MASKED: the tile may reach
    # past the context (else no masks: the query sees every key).
    # q_t: [BLOCK_D, BLOCK_G]; m_i, l_i: [BLOCK_G]; acc_t: [BLOCK_D, BLOCK_G]
    pos = start + tl.arange(0, BLOCK_N)
    pos_ok = pos < ctx
    if MASKED:
        block = tl.load(bt_row + pos // BLOCK_SIZE, mask=pos_ok, other=0).to(tl.int64)
    else:
        block = tl.load(bt_row + pos // BLOCK_SIZE).to(tl.int64)
    slot = pos % BLOCK_SIZE
    k_ptrs = k_head + block[:, None] * stride_kb + slot[:, None] * stride_ks + dims[None, :]
    v_ptrs = v_head + block[None, :] * stride_vb + slot[None, :] * stride_vs + dims[:, None]
    if MASKED:
        # Masked slots load as 0, never as what the cache holds there (maybe NaN).
        k = tl.load(k_ptrs, mask=pos_ok[:, None] & d_ok[None, :], other=0.0).to(q_t.dtype)  # [BLOCK_N, BLOCK_D]
        v_t = tl.load(v_ptrs, mask=d_ok[:, None] & pos_ok[None, :], other=0.0).to(q_t.dtype)  # [BLOCK_D, BLOCK_N]
    elif EVEN_D:
        k = tl.load(k_ptrs).to(q_t.dtype)
        v_t = tl.load(v_ptrs).to(q_t.dtype)
    else:  # head_dim short of the tile's power of two
        k = tl.load(k_ptrs, mask=d_ok[None, :], other=0.0).to(q_t.dtype)
        v_t = tl.load(v_ptrs, mask=d_ok[:, None], other=0.0).to(q_t.dtype)
    s_t = tl.dot(k, q_t, input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_N, BLOCK_G], base 2
    if MASKED:
        s_t = tl.where(pos_ok[:, None], s_t, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s_t, axis=0))
    alpha = tl.exp2(m_i - m_new)
    p_t = tl.exp2(s_t - m_new[None, :])
    l_i = l_i * alpha + tl.sum(p_t, axis=0)
    acc_t = tl.dot(v_t, p_t.to(v_t.dtype), acc_t * alpha[None, :], input_precision=DOT_PRECISION)
    return m_new, l_i, acc_t


@triton.jit
def _paged_decode_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, block_tables_ptr, context_lens_ptr, query_start_ptr, qk_scale, v_scale,
        stride_qt, stride_qh, stride_ot, stride_oh,
        stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
        G: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        DOT_PRECISION: tl.constexpr, WHILE_LOOP: tl.constexpr, FP16_DOTS: tl.constexpr, BLOCK_G: tl.constexpr,
        BLOCK_N: tl.constexpr, USE_PDL: tl.constexpr):
    # q, out: [tokens, heads, HEAD_DIM]; k, v: [num_blocks, BLOCK_SIZE, kv_heads, HEAD_DIM];
    # block_tables: [seqs, max_blocks]; context_lens: [seqs]; query_start: [seqs + 1], at most one query each
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    g = tl.arange(0, BLOCK_G)
    head = kv_head * G + g
    dims = tl.arange(0, BLOCK_D)
    d_ok = dims < HEAD_DIM
    wait_for_previous(USE_PDL)
    tok = tl.load(query_start_ptr + seq)
    if tl.load(query_start_ptr + seq + 1) == tok:  # no query for this sequence
        return
    ctx = tl.load(context_lens_ptr + seq)
    tok = tok.to(tl.int64)
    mask_t = d_ok[:, None] & (g < G)[None, :]  # [BLOCK_D, BLOCK_G]
    q_t = tl.load(q_ptr + tok * stride_qt + head[None, :] * stride_qh + dims[:, None], mask=mask_t, other=0.0)
    if FP16_DOTS:  # an fp8 cache under a bf16 / fp16 model: fp16 dots (paged_attention.py says why)
        q_t = q_t.to(tl.float16)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_head = k_ptr + kv_head * stride_kh
    v_head = v_ptr + kv_head * stride_vh
    m_i = tl.full((BLOCK_G,), -1.0e30, dtype=tl.float32)  # finite: a fully masked tile gives exp2(0), not NaN
    l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc_t = tl.zeros((BLOCK_D, BLOCK_G), dtype=tl.float32)
    open_stop = ctx // BLOCK_N * BLOCK_N  # whole tiles: no masks
    if WHILE_LOOP:  # the interpreter (paged_attention._attend_keys says why)
        start = ctx * 0
        while start < open_stop:
            m_i, l_i, acc_t = _key_tile_by_rows(q_t, m_i, l_i, acc_t, start, ctx, bt_row, k_head, v_head, qk_scale,
                                                stride_kb, stride_ks, stride_vb, stride_vs, dims, d_ok,
                                                BLOCK_SIZE, DOT_PRECISION, BLOCK_N, False, HEAD_DIM == BLOCK_D)
            start += BLOCK_N
        while start < ctx:
            m_i, l_i, acc_t = _key_tile_by_rows(q_t, m_i, l_i, acc_t, start, ctx, bt_row, k_head, v_head, qk_scale,
                                                stride_kb, stride_ks, stride_vb, stride_vs, dims, d_ok,
                                                BLOCK_SIZE, DOT_PRECISION, BLOCK_N, True, HEAD_DIM == BLOCK_D)
            start += BLOCK_N
    else:
        for start in range(0, open_stop, BLOCK_N):
            m_i, l_i, acc_t = _key_tile_by_rows(q_t, m_i, l_i, acc_t, start, ctx, bt_row, k_head, v_head, qk_scale,
                                                stride_kb, stride_ks, stride_vb, stride_vs, dims, d_ok,
                                                BLOCK_SIZE, DOT_PRECISION, BLOCK_N, False, HEAD_DIM == BLOCK_D)
        for start in range(open_stop, ctx, BLOCK_N):
            m_i, l_i, acc_t = _key_tile_by_rows(q_t, m_i, l_i, acc_t, start, ctx, bt_row, k_head, v_head, qk_scale,
                                                stride_kb, stride_ks, stride_vb, stride_vs, dims, d_ok,
                                                BLOCK_SIZE, DOT_PRECISION, BLOCK_N, True, HEAD_DIM == BLOCK_D)
    out_t = acc_t / tl.where(l_i > 0, l_i, 1.0)[None, :] * v_scale  # no key (padding): 0, not 0 / 0
    tl.store(out_ptr + tok * stride_ot + head[None, :] * stride_oh + dims[:, None],
             out_t.to(out_ptr.dtype.element_ty), mask=mask_t)


def launch_decode_by_rows(q, k_cache, v_cache, out, block_tables, context_lens, query_start, qk_scale: float,
                          v_scale: float, **kernel_args) -> None:
    """One program per (sequence, KV head) of a decode-only batch; kernel_args as paged_attention builds
    them (G, BLOCK_SIZE, HEAD_DIM, BLOCK_D, DOT_PRECISION, WHILE_LOOP, FP16_DOTS, BLOCK_N, num_warps,
    num_stages and the PDL launch). The operands were checked by paged_attention."""
    grid = (block_tables.shape[0], k_cache.shape[2])
    _paged_decode_kernel[grid](
        q, k_cache, v_cache, out, block_tables, context_lens, query_start, qk_scale, v_scale,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        BLOCK_G=max(16, triton.next_power_of_2(kernel_args["G"])), **kernel_args)

