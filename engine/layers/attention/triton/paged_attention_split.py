"""Split-KV ("flash-decoding") kernels for decode-only batches of paged attention, launched by
paged_attention.paged_attention when decode_splits there says to.

A decode step has one program per (sequence, KV head): at batch 1 that is a few dozen programs on a GPU
of a hundred-odd SMs, each walking the whole context alone, so the step's latency is one program's serial
walk. Here each (sequence, KV head) instead spreads its keys over several programs (grid axis 2), each
running the same online softmax (_attend_keys, the same rows: the heads of one KV group) over its
own key range and writing its partial result, merged by the last split to finish (below). The partial
results are the normalized output o = acc / l with the running max m (base 2, as qk_scale includes
log2(e)) and sum l; merged, split s weighs l_s * exp2(m_s - M), M the largest m_s.

Each split's key range comes from the sequence's context length inside the kernel, in whole key tiles,
so the number of splits is fixed by the batch's shape alone (the grid a CUDA graph captures) while the
context grows from step to step; a short context leaves trailing splits empty, and they exit at once.

The merge runs in the same launch: each working split stores its partial, then counts its arrival on its
(sequence, KV head)'s counter; the last to arrive merges them in split order (the same sum every run)
and resets the counter for the next launch. A context that one split covers (up to four key tiles)
skips all of that: its one working split writes the output directly, so short contexts cost what the
unsplit kernel costs (a separate merge launch made 128 tokens 20% slower, H200), while 2048 tokens at
batch 1 take 13.3 us instead of 48.2 on an H100 (bench/attention_sweep.py --split). v_scale (fp8 caches) is applied
once, to the output.

Given the step's new K/V (ROPE_STORE, paged_attention.NewKV), the kernel also does rope_store_kv's work,
which was one more single-program launch per layer before it: each program rotates its query rows in
registers, and the split that reads the newest key first rotates and stores its KV head's new key and
value, then a CTA barrier orders those stores before its key loads. The same arithmetic as
rope_store_kv, so the cache and the output keep their bits (the tests compare with torch.equal). On an
H100, decode graph replay at batch 1 (bench/ab_step.sh, one run each): bf16 7B 5.191 -> 5.157 ms,
int8_wo 3.061 -> 3.038 ms, within the run-to-run spread seen before (about +-0.03 ms); skipping the
rope_store_kv launch altogether bounds the gain at ~0.06 ms (docs/benchmarks.md, session 11).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.layers.attention.kv_quant import KV_FP8, KV_FP8_MAX
from engine.layers.attention.triton.kv_store import store_at_slot
from engine.layers.attention.triton.paged_attention import _attend_keys
from engine.layers.triton import next_power_of_2
from engine.layers.triton.pdl import prefetch_l2, wait_for_previous
from engine.layers.triton.rotary import _rotated
from engine.layers.triton.split_k import MAX_ROW_TILES_SPLIT, arrival_counters

# A split walks at least this many key tiles (of LAUNCH["decode_split"]'s 128 keys). With the earlier
# 64-key pipelined tiles a merge cost more than it saved below 256 tokens, hence 4 then; with 128-key
# tiles issued at once, one tile per split won at every context measured (bench/attention_sweep.py --small).
MIN_TILES_PER_SPLIT = 1
MAX_COUNTERS = MAX_ROW_TILES_SPLIT  # (sequence, KV head) pairs of a split launch: < 2 per SM in practice


@triton.jit
def _prefetch_kv_tile(start, end, bt_row, k_head, v_head, stride_kb, stride_ks, stride_vb, stride_vs,
                      BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                      ELEMENT_BYTES: tl.constexpr, BLOCK_N: tl.constexpr):
    """Asks L2 for the K and V rows of key positions start .. start + BLOCK_N - 1 below end: one request
    per 128-byte line of each row, no registers held."""
    # Lines of the power-of-two tile width BLOCK_D (tl.arange needs a power of two: 80 float32 dims are
    # 2.5 lines); those past HEAD_DIM are masked off.
    LINES: tl.constexpr = (BLOCK_D * ELEMENT_BYTES + 127) // 128
    STEP: tl.constexpr = 128 // ELEMENT_BYTES  # elements per line
    pos = start + tl.arange(0, BLOCK_N)
    ok = pos < end
    block = tl.load(bt_row + pos // BLOCK_SIZE, mask=ok, other=0).to(tl.int64)
    slot = pos % BLOCK_SIZE
    line = tl.arange(0, LINES) * STEP
    mask = ok[:, None] & (line < HEAD_DIM)[None, :]
    prefetch_l2(k_head + block[:, None] * stride_kb + slot[:, None] * stride_ks + line[None, :], mask)
    prefetch_l2(v_head + block[:, None] * stride_vb + slot[:, None] * stride_vs + line[None, :], mask)


@triton.jit
def _rotated_rows(x_ptrs, c, s, dims, mask, HALF: tl.constexpr):
    """Rows of heads [rows, HEAD_DIM] at x_ptrs rotated by RoPE: c, s are the token's cos / sin for each dim
    [HEAD_DIM] (its first-half entry: the tables repeat their first half), dims [1, HEAD_DIM]; each dim's
    partner in the other half is loaded again (an L1 hit). rotary._rotated computes both halves from x1 (the
    first-half value) and x2 (the second's) with the explicit FMAs rope_store_kv uses: its bits."""
    first = dims < HALF
    x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
    xp = tl.load(x_ptrs + tl.where(first, HALF, -HALF), mask=mask, other=0.0).to(tl.float32)
    rotated_first, rotated_second = _rotated(tl.where(first, x, xp), tl.where(first, xp, x), c, s)
    return tl.where(first, rotated_first, rotated_second)


@triton.jit
def _rope_store_new_kv(kn_ptr, vn_ptr, k_cache_head, v_cache_head, slot, c, s, dims, d_ok, k_inv_scale,
                       v_inv_scale, stride_ks, stride_vs, stride_kb, stride_vb, HALF: tl.constexpr,
                       BLOCK_SIZE: tl.constexpr, FP8: tl.constexpr, FP8_MAX: tl.constexpr):
    """Stores this step's key (rotated) and value of one KV head into its cache slot, as rope_store_kv
    does: rounded to the activation dtype, then (fp8 cache) scaled, saturated and rounded to e4m3."""
    row, row_ok = dims[None, :], d_ok[None, :]  # [1, HEAD_DIM]: one head
    k = _rotated_rows(kn_ptr + row, c, s, row, row_ok, HALF).to(kn_ptr.dtype.element_ty)
    v = tl.load(vn_ptr + row, mask=row_ok)
    store_at_slot(k_cache_head, v_cache_head, slot, k, v, row, row, row_ok, stride_kb, stride_ks, stride_vb,
                  stride_vs, k_inv_scale, v_inv_scale, BLOCK_SIZE, FP8, FP8_MAX)


@triton.jit
def _split_attention_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, o_part_ptr, m_part_ptr, l_part_ptr, count_ptr, block_tables_ptr,
        context_lens_ptr, query_start_ptr, qk_scale, v_scale, stride_qt, stride_qh, stride_ot, stride_oh,
        stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt, stride_ps, stride_ph,
        kn_ptr, vn_ptr, slot_ptr, pos_ptr, cos_ptr, sin_ptr, k_inv_scale, v_inv_scale, stride_knt, stride_knh,
        stride_vnt, stride_vnh, stride_cos, stride_sin,
        G: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        DOT_PRECISION: tl.constexpr, WHILE_LOOP: tl.constexpr, FP16_DOTS: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, MIN_TILES_PER_SPLIT: tl.constexpr,
        ROPE_STORE: tl.constexpr, FP8: tl.constexpr, FP8_MAX: tl.constexpr, USE_PDL: tl.constexpr):
    # q, out: [tokens, heads, HEAD_DIM], at most one token per sequence; k, v, block_tables, context_lens,
    # query_start: as _paged_attention_kernel's. m_part, l_part: [seqs, heads, SPLITS] (strides ps, ph, 1);
    # o_part: [seqs, heads, SPLITS, HEAD_DIM], the same layout with HEAD_DIM appended. count: [seqs * kv_heads].
    # ROPE_STORE: q and this step's kn, vn ([tokens, kv_heads, HEAD_DIM]) are unrotated and the new K/V
    # not yet cached: every program rotates its q rows in registers, and the split holding the newest
    # key stores its KV head's new key and value before reading keys (NewKV in paged_attention.py).
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    # Before the wait (pdl.py): the batch's metadata, and a request to L2 for this split's first key tile
    # (its newest key may still be being stored, but L2 is where that store lands: nothing stale is read).
    # At batch 1 this kernel is a chain of dependent round trips to memory (query start and context,
    # block table, K/V, merge); these then overlap the kernels before instead of following them.
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    ctx = tl.load(context_lens_ptr + seq)
    # Whole key tiles per split, so only the context's last tile is partial; with few keys only the
    # first splits get any (a context of 0, padding, gets none: split 0 writes its zeros).
    chunk = tl.maximum(tl.cdiv(tl.cdiv(ctx, SPLITS), BLOCK_N), MIN_TILES_PER_SPLIT) * BLOCK_N
    working = tl.cdiv(ctx, tl.maximum(chunk, 1))
    kv_start = split * chunk
    kv_end = tl.minimum(ctx, kv_start + chunk)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_head = k_ptr + kv_head * stride_kh
    v_head = v_ptr + kv_head * stride_vh
    dims = tl.arange(0, BLOCK_D)
    d_ok = dims < HEAD_DIM
    if ROPE_STORE:  # the step's positions, slots and the tables: inputs copied in before it (pdl.py)
        token = q_start.to(tl.int64)
        slot = tl.load(slot_ptr + token)
        pos = tl.load(pos_ptr + token)
        # Each dim takes its first-half entry, as rope_store_kv reads the tables: the same bits even where a
        # table's halves were computed apart and differ in the last place.
        table_dims = tl.where(dims < HEAD_DIM // 2, dims, dims - HEAD_DIM // 2)
        c = tl.load(cos_ptr + pos * stride_cos + table_dims, mask=d_ok, other=0.0)
        s = tl.load(sin_ptr + pos * stride_sin + table_dims, mask=d_ok, other=0.0)
    if USE_PDL:
        _prefetch_kv_tile(kv_start, kv_end, bt_row, k_head, v_head, stride_kb, stride_ks, stride_vb, stride_vs,
                          BLOCK_SIZE, HEAD_DIM, BLOCK_D, k_ptr.dtype.element_ty.primitive_bitwidth // 8, BLOCK_N)
    wait_for_previous(USE_PDL)
    if q_len == 0:  # no query: no rows
        return
    if split >= tl.maximum(working, 1):
        return
    rows = tl.arange(0, BLOCK_M)  # BLOCK_M >= G: the whole KV group in one tile
    row_ok = rows < G
    head = kv_head * G + rows
    q_pos = ctx - 1 + rows * 0  # the query is the context's last token: it sees every key
    rd_ok = row_ok[:, None] & d_ok[None, :]

    q_ptrs = q_ptr + q_start.to(tl.int64) * stride_qt + head[:, None] * stride_qh + dims[None, :]
    if ROPE_STORE:
        if split == tl.maximum(working, 1) - 1 and slot >= 0:  # this split reads the newest key
            _rope_store_new_kv(kn_ptr + token * stride_knt + kv_head * stride_knh,
                               vn_ptr + token * stride_vnt + kv_head * stride_vnh, k_head, v_head, slot, c, s,
                               dims, d_ok, k_inv_scale, v_inv_scale, stride_ks, stride_vs, stride_kb, stride_vb,
                               HEAD_DIM // 2, BLOCK_SIZE, FP8, FP8_MAX)
        # The stores land before any thread of this program loads the keys (a CTA barrier orders its
        # global memory accesses).
        tl.debug_barrier()
        q = _rotated_rows(q_ptrs, c, s, dims[None, :], rd_ok, HEAD_DIM // 2)
        q = q.to(q_ptr.dtype.element_ty)
    else:
        q = tl.load(q_ptrs, mask=rd_ok, other=0.0)  # [BLOCK_M, BLOCK_D]
    if FP16_DOTS:  # an fp8 cache under a 16-bit model: see _paged_attention_kernel
        q = q.to(tl.float16)

    # Every key of the split is visible to the query (the context's last token): only the edge tile is masked.
    m_i, l_i, acc = _attend_keys(q, q_pos, kv_start, kv_end, kv_end, bt_row, k_head, v_head, qk_scale, stride_kb,
                                 stride_ks, stride_vb, stride_vs, dims, d_ok, BLOCK_SIZE, DOT_PRECISION, WHILE_LOOP,
                                 BLOCK_M, BLOCK_D, BLOCK_N, HEAD_DIM == BLOCK_D)

    o_ptrs = out_ptr + q_start.to(tl.int64) * stride_ot + head[:, None] * stride_oh + dims[None, :]
    if working <= 1:  # one split holds every key: its result is the output (zeros for no key)
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None] * v_scale
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=rd_ok)
        return
    part = seq.to(tl.int64) * stride_ps + head * stride_ph  # [BLOCK_M]: this row's split 0
    tl.store(m_part_ptr + part + split, m_i, mask=row_ok)
    tl.store(l_part_ptr + part + split, l_i, mask=row_ok)
    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(o_part_ptr + (part + split)[:, None] * HEAD_DIM + dims[None, :], o, mask=rd_ok)
    # Every thread's stores land before one thread counts the arrival (barrier, then a release); the
    # last to arrive acquires, so it reads every partial.
    tl.debug_barrier()
    counter = count_ptr + seq * tl.num_programs(1) + kv_head
    if tl.atomic_add(counter, 1, sem="acq_rel") == working - 1:
        big_m = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
        for j in tl.static_range(SPLITS):
            m_j = tl.load(m_part_ptr + part + j, mask=row_ok & (rows * 0 + j < working), other=-1.0e30,
                          cache_modifier=".cg")
            big_m = tl.maximum(big_m, m_j)
        total = tl.zeros((BLOCK_M,), dtype=tl.float32)
        merged = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        for j in tl.static_range(SPLITS):  # split order: the same sum every run
            ok = row_ok & (rows * 0 + j < working)  # vectors: the interpreter takes no scalar mask
            m_j = tl.load(m_part_ptr + part + j, mask=ok, other=-1.0e30, cache_modifier=".cg")
            l_j = tl.load(l_part_ptr + part + j, mask=ok, other=0.0, cache_modifier=".cg")
            o_j = tl.load(o_part_ptr + (part + j)[:, None] * HEAD_DIM + dims[None, :], mask=ok[:, None] & d_ok[None, :],
                          other=0.0, cache_modifier=".cg")
            w_j = l_j * tl.exp2(m_j - big_m)  # [BLOCK_M]
            total += w_j
            merged += w_j[:, None] * o_j
        out = merged / tl.where(total > 0, total, 1.0)[:, None] * v_scale
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=rd_ok)
        tl.atomic_xchg(counter, 0, sem="relaxed")


def split_paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
                          block_tables: torch.Tensor, context_lens: torch.Tensor, query_start: torch.Tensor,
                          qk_scale: float, v_scale: float, splits: int, block_m: int, new_kv=None,
                          k_scale: float = 1.0, **kernel_args) -> None:
    """Writes out's rows for a decode-only batch (checked by the caller), the keys of each (sequence, KV
    head) split over `splits` programs. new_kv (paged_attention.NewKV, checked by the caller): q and its
    k, v are unrotated and not cached yet; the kernel rotates and stores them. kernel_args: the tiles,
    dtypes and flags _paged_attention_kernel gets (G, BLOCK_SIZE, HEAD_DIM, BLOCK_D, DOT_PRECISION,
    WHILE_LOOP, FP16_DOTS, BLOCK_N, num_warps, num_stages, and USE_PDL with its launch flag)."""
    seqs, heads, head_dim, kv_heads = block_tables.shape[0], q.shape[1], q.shape[2], k_cache.shape[2]
    if seqs * kv_heads > MAX_COUNTERS:
        raise ValueError(f"splits: a split launch takes at most {MAX_COUNTERS} (sequence, KV head) pairs, "
                         f"got {seqs} x {kv_heads}")
    # Scratch in float32: the merge reweighs each partial by up to 2^(m_s - M), too lossy in 16 bits.
    # torch.empty is fine inside CUDA-graph capture (the graph's pool serves it at every replay).
    o_part = torch.empty((seqs, heads, splits, head_dim), dtype=torch.float32, device=q.device)
    m_part = torch.empty((seqs, heads, splits), dtype=torch.float32, device=q.device)
    l_part = torch.empty_like(m_part)
    if new_kv is None:  # pointers the kernel never reads
        kn, vn, slots, positions, cos, sin = q, q, context_lens, context_lens, m_part, m_part
    else:
        kn, vn, slots, positions, cos, sin = (new_kv.k, new_kv.v, new_kv.slot_mapping, new_kv.positions,
                                              new_kv.cos, new_kv.sin)
    _split_attention_kernel[(seqs, kv_heads, splits)](
        q, k_cache, v_cache, out, o_part, m_part, l_part, arrival_counters(q.device), block_tables, context_lens,
        query_start, qk_scale, v_scale, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        m_part.stride(0), m_part.stride(1),
        kn, vn, slots, positions, cos, sin, 1.0 / k_scale, 1.0 / v_scale, kn.stride(0), kn.stride(1),
        vn.stride(0), vn.stride(1), cos.stride(0), sin.stride(0),
        # A GQA group wider than one tile (G > 16) still takes one program: the split grid axis is taken.
        BLOCK_M=max(block_m, next_power_of_2(kernel_args["G"])), SPLITS=splits,
        MIN_TILES_PER_SPLIT=MIN_TILES_PER_SPLIT, ROPE_STORE=new_kv is not None, FP8=k_cache.dtype == KV_FP8,
        FP8_MAX=KV_FP8_MAX, **kernel_args)
