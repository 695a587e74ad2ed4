"""Paged attention for a mixed batch (decode, prefill and chunked prefill in one launch), reading K/V
straight from the block-table cache, flash-attention style.

One program handles every query head of one KV head for a tile of rows, where a row is a (query token,
head in the KV group) pair: row r -> token r // G, head kv_head * G + r % G (G = heads per KV head).
A decode step (one query per sequence) thus puts a whole GQA group into one tile and reads each
sequence's K/V once per KV head instead of once per query head, and tl.dot gets its 16 rows even when
there is a single query token. Grid: (seqs, kv_heads, row tiles), so a long prefill spreads over many
programs while decode needs exactly one tile per (sequence, KV head).

Keys are walked in BLOCK_N-position tiles; every position finds its cache block through the block table,
so a tile may span several (non-adjacent) cache blocks and block_size need not match BLOCK_N. Softmax is
the online (running max and sum) form in float32 with exp2. Keys at or past a sequence's context length
are masked out both in the scores and in the loads (other=0), so whatever stale or NaN data sits in a
block's unused slots never reaches the output; tiles whose every key all the program's rows see (flash
attention's off-diagonal blocks) skip both masks. A row with no visible key (padding: context_len 0) is
written as zeros.

An fp8 cache (kv_quant.py) is read as e4m3 tiles, half the bytes, converted in registers to fp16 for a
bf16 or fp16 model (the dots then run in fp16, a bf16 query converted once per program), to float32 for
a float32 one; its scales are never applied per element: k_scale is folded into the score scale, and v_scale
onto the output (the softmax weights of a row sum to 1, so sum p * (v * v_scale) = v_scale * sum p * v).

A decode-only batch with few (sequence, KV head) pairs leaves most SMs idle while each program walks its
whole context alone (batch 1 of a 32-KV-head model: 32 programs on 132 SMs), so its latency grows with the
context. Such batches split each pair's keys over several programs and merge their partial softmax
results (paged_attention_split.py); decode_splits picks how many from the batch's shape and the GPU
alone, never from context lengths, so a captured decode graph stays valid as contexts grow.

An unsplit decode-only batch over an fp8 cache takes paged_decode.py's kernel instead (the keys as the
dot's rows: DECODE_KERNEL), faster there at the contexts of most decode steps.

Block sizes and split counts are fixed per batch shape, never autotuned: the kernels are captured in CUDA
graphs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import torch
import triton
import triton.language as tl

from engine.layers.attention.kv_quant import KV_FP8, check_kv_scales
from engine.layers.attention.triton.kv_store import check_store_operands
from engine.layers.attention.triton.paged_decode import launch_decode_by_rows
from engine.layers.attention.triton.rope_store_kv import rope_store_kv
from engine.layers.quantization.triton import multiprocessors as cuda_multiprocessors
from engine.layers.triton import (FLOAT_DTYPES, check_last_dim_contiguous, check_shape, check_tensor, interpreting,
                                  next_power_of_2)
from engine.layers.triton.pdl import pdl_launch, wait_for_previous
from engine.layers.triton.rotary import check_rope_operands



@dataclass(frozen=True)
class NewKV:
    """This step's K and V ([tokens, kv_heads, head_dim], not cached yet) and what RoPE needs: given to
    paged_attention with an unrotated q, it rotates q and k at `positions` (cos / sin: RotaryEmbedding's
    float32 tables) and stores k and v at `slot_mapping` before attending, as rope_store_kv would. A
    split decode launch does it inside the attention kernel (one launch and one round trip through
    memory fewer per layer); any other batch calls rope_store_kv first, which rotates q in place."""
    k: torch.Tensor
    v: torch.Tensor
    slot_mapping: torch.Tensor
    positions: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int  # rows (query token x group head) per program
    block_n: int  # key positions per tile
    num_warps: int
    num_stages: int  # pipeline depth of the K/V loads (float32 gets at most 2: twice the bytes per tile)


# Per batch kind, chosen by bench/attention_sweep.py on an H200 (see docs/benchmarks.md). Decode batches
# have G rows per (sequence, KV head) and 16 is tl.dot's minimum; prefill tiles are taller so each K/V
# tile read serves more queries.
LAUNCH: dict[str, LaunchConfig] = {
    # (Session 14's grid on an H200, 128-2112 tokens: 2 stages 1-3% faster than the 3 taken before.)
    "decode": LaunchConfig(block_m=16, block_n=64, num_warps=4, num_stages=2),
    # A decode batch too small to fill the GPU (decode_splits > 1: batch 1, say) splits its keys
    # (paged_attention_split.py) and each split walks a tile or a few, so latency is what counts: long
    # tiles, issued at once (no pipeline). bench/attention_sweep.py --small on an H100, batch 1, 32 heads,
    # per layer: 3.8 / 4.2 / 6.0 / 6.1 / 12.5 us at 64 / 128 / 160 / 512 / 2048 tokens, against 4.8 / 5.1 /
    # 6.4 / 9.7 / 13.6 with the decode tiles (64 keys, 3 stages) and splits of at least 4 tiles.
    "decode_split": LaunchConfig(block_m=16, block_n=128, num_warps=4, num_stages=1),
    # Over an fp8 cache a key tile is half the bytes: longer tiles keep as many bytes in flight
    # (bench/attention_sweep.py --fp8, 192 sequences x 1100 tokens: 639 us against 747 with the decode
    # tiles on an H200; the best on an H100 too, 705 us). Split decode batches take it; unsplit ones over
    # an fp8 cache take paged_decode.py's kernel (DECODE_KERNEL) with "decode_rows_fp8".
    "decode_fp8": LaunchConfig(block_m=16, block_n=128, num_warps=2, num_stages=4),
    "prefill": LaunchConfig(block_m=64, block_n=64, num_warps=4, num_stages=3),
    # Over an fp8 cache each tile is converted in registers: 2 stages (bench/attention_sweep.py --prefill,
    # H100, 4 x 2,048 tokens: 580 against 694 us with 3; 64 x 128: 109 against 124).
    "prefill_fp8": LaunchConfig(block_m=64, block_n=64, num_warps=4, num_stages=2),
    # Unsplit decode with the keys as the dot's rows (paged_decode.py; block_m unused: the group's heads are
    # the columns): over an fp8 cache, 64-key tiles of 2 warps, where the tiles above for an fp8 cache lost up
    # to 26% (session 14's grid, H200). Since whole tiles skip the masks, 2 stages are each throughput shape's
    # best launch of both kernels (bench/attention_sweep.py --grid --head-major --cache fp8, H100: 4 stages,
    # taken before, 5-7% slower on every shape; 512 sequences x 192 tokens 335 against 350 us).
    "decode_rows": LaunchConfig(block_m=16, block_n=64, num_warps=2, num_stages=3),
    "decode_rows_fp8": LaunchConfig(block_m=16, block_n=64, num_warps=2, num_stages=2),
}
# Which kernel an unsplit decode-only batch takes, by cache kind: "queries" (this module's: the queries
# as the dot's rows) or "keys" (paged_decode.py: the keys as rows). Over a cache in the model's dtype the
# two are within 4% (the sweep above), and this module's kernel is the faster.
DECODE_KERNEL: dict[str, str] = {"fp8": "keys", "model_dtype": "queries"}
# The interpreter runs each key tile in numpy: smaller tiles make tiles span cache blocks and the
# context edge at test sizes.
INTERPRET_BLOCK_N: Final[int] = 32
# Under the interpreter the key loop is a while loop (see the kernel); tests turn this off to run the
# compiled path's for loop where the interpreter can.
INTERPRET_WITH_WHILE_LOOP = True
LOG2E: Final[float] = 1.4426950408889634
# Split-KV for decode: up to two programs per SM (one wave of small programs hides another's load
# latency), never more than 16 splits (each split re-reads q and writes a partial; the merge reads them all).
MAX_SPLITS: Final[int] = 16
# The interpreter has no SMs to count: a small GPU's worth makes test-sized decode batches split.
INTERPRET_MULTIPROCESSORS: Final[int] = 8


@triton.jit
def _attend_key_tile(q, q_pos, m_i, l_i, acc, start, kv_end, bt_row, k_head, v_head, qk_scale,
                     stride_kb, stride_ks, stride_vb, stride_vs, dims, d_ok,
                     BLOCK_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
                     MASKED: tl.constexpr, EVEN_D: tl.constexpr):
    # One online-softmax step over key positions start .. start + BLOCK_N - 1. MASKED: the tile may hold
    # keys past kv_end or past a row's position; else every key is visible to every row (no masks).
    # q: [BLOCK_M, BLOCK_D]; q_pos, m_i, l_i: [BLOCK_M]; acc: [BLOCK_M, BLOCK_D]
    pos = start + tl.arange(0, BLOCK_N)
    pos_ok = pos < kv_end
    if MASKED:
        block = tl.load(bt_row + pos // BLOCK_SIZE, mask=pos_ok, other=0).to(tl.int64)
    else:
        block = tl.load(bt_row + pos // BLOCK_SIZE).to(tl.int64)
    slot = pos % BLOCK_SIZE
    k_ptrs = k_head + block[:, None] * stride_kb + slot[:, None] * stride_ks + dims[None, :]
    v_ptrs = v_head + block[:, None] * stride_vb + slot[:, None] * stride_vs + dims[None, :]
    # An fp8 cache converts to q's dtype here (fp16 for a bf16 model: see the kernel); else a no-op.
    if MASKED:
        # Masked slots load as 0, never as what the cache holds there (maybe NaN): p * NaN would be NaN.
        kv_mask = pos_ok[:, None] & d_ok[None, :]  # [BLOCK_N, BLOCK_D]
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0).to(q.dtype)  # [BLOCK_N, BLOCK_D]
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0).to(q.dtype)  # [BLOCK_N, BLOCK_D]
    elif EVEN_D:
        k = tl.load(k_ptrs).to(q.dtype)
        v = tl.load(v_ptrs).to(q.dtype)
    else:  # head_dim short of the tile's power of two
        k = tl.load(k_ptrs, mask=d_ok[None, :], other=0.0).to(q.dtype)
        v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0).to(q.dtype)

    # qk_scale = scale * k_scale * log2(e): scores are kept in base 2, since exp2 is the native instruction.
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
    if MASKED:
        visible = pos_ok[None, :] & (pos[None, :] <= q_pos[:, None])
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def _attend_keys(q, q_pos, kv_start, kv_end, open_end, bt_row, k_head, v_head, qk_scale,
                 stride_kb, stride_ks, stride_vb, stride_vs, dims, d_ok,
                 BLOCK_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr, WHILE_LOOP: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr):
    """The online softmax of q's rows over key positions kv_start .. kv_end - 1: (m, l, acc), unnormalized.
    Every row sees every key before open_end (<= kv_end): whole tiles of those skip the masks (the causal
    one and the context edge's), as flash attention's off-diagonal blocks do; the tiles after are masked."""
    m_i = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)  # finite: a fully masked tile gives exp2(0), not NaN
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    open_stop = kv_start + tl.maximum(open_end - kv_start, 0) // BLOCK_N * BLOCK_N
    if WHILE_LOOP:
        # Triton 3.6's interpreter cannot run a for loop to a run-time bound (it converts the bound with
        # int(), which numpy >= 2.4 refuses for its 1-element arrays); a while loop works there and later.
        start = kv_start
        while start < open_stop:
            m_i, l_i, acc = _attend_key_tile(q, q_pos, m_i, l_i, acc, start, kv_end, bt_row, k_head, v_head,
                                             qk_scale, stride_kb, stride_ks, stride_vb, stride_vs, dims, d_ok,
                                             BLOCK_SIZE, DOT_PRECISION, BLOCK_N, False, EVEN_D)
            start += BLOCK_N
        while start < kv_end:
            m_i, l_i, acc = _attend_key_tile(q, q_pos, m_i, l_i, acc, start, kv_end, bt_row, k_head, v_head,
                                             qk_scale, stride_kb, stride_ks, stride_vb, stride_vs, dims, d_ok,
                                             BLOCK_SIZE, DOT_PRECISION, BLOCK_N, True, EVEN_D)
            start += BLOCK_N
    else:
        # Compiled, a for loop is what Triton software-pipelines (loads of the next tile in flight).
        for start in range(kv_start, open_stop, BLOCK_N):
            m_i, l_i, acc = _attend_key_tile(q, q_pos, m_i, l_i, acc, start, kv_end, bt_row, k_head, v_head,
                                             qk_scale, stride_kb, stride_ks, stride_vb, stride_vs, dims, d_ok,
                                             BLOCK_SIZE, DOT_PRECISION, BLOCK_N, False, EVEN_D)
        for start in range(open_stop, kv_end, BLOCK_N):
            m_i, l_i, acc = _attend_key_tile(q, q_pos, m_i, l_i, acc, start, kv_end, bt_row, k_head, v_head,
                                             qk_scale, stride_kb, stride_ks, stride_vb, stride_vs, dims, d_ok,
                                             BLOCK_SIZE, DOT_PRECISION, BLOCK_N, True, EVEN_D)
    return m_i, l_i, acc


@triton.jit
def _paged_attention_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, block_tables_ptr, context_lens_ptr, query_start_ptr, qk_scale, v_scale,
        stride_qt, stride_qh, stride_ot, stride_oh,
        stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
        G: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        DOT_PRECISION: tl.constexpr, WHILE_LOOP: tl.constexpr, FP16_DOTS: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, USE_PDL: tl.constexpr):
    # q, out: [tokens, heads, HEAD_DIM]; k, v: [num_blocks, BLOCK_SIZE, kv_heads, HEAD_DIM];
    # block_tables: [seqs, max_blocks]; context_lens: [seqs]; query_start: [seqs + 1]
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    wait_for_previous(USE_PDL)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    ctx = tl.load(context_lens_ptr + seq)
    row0 = tl.program_id(2) * BLOCK_M
    n_rows = q_len * G
    if row0 >= n_rows:  # the grid is sized for the longest query; shorter sequences have fewer tiles
        return

    rows = row0 + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    tok = rows // G  # query index within the sequence
    head = kv_head * G + rows % G
    q_pos = ctx - q_len + tok  # absolute position: this step's queries are the context's last q_len
    dims = tl.arange(0, BLOCK_D)
    d_ok = dims < HEAD_DIM

    q_rows = (q_start + tok).to(tl.int64)
    q_ptrs = q_ptr + q_rows[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    if FP16_DOTS:
        # e4m3 -> fp16 is one instruction per two values (sm_89+); e4m3 -> bf16 goes through fp32, three
        # conversions at the SMs' low conversion rate (128/2048 on an H200: 5,042 tok/s that way, 5,712 so).
        # So a bf16 model's fp8 cache is attended in fp16 (q's bf16 values fit fp16, with more mantissa);
        # a float32 model keeps float32 dots, exact to its reference.
        q = q.to(tl.float16)

    # Causal: no row of this tile sees past its last row's position (nor past the context).
    last_tok = (tl.minimum(row0 + BLOCK_M, n_rows) - 1) // G
    kv_end = tl.minimum(ctx, ctx - q_len + last_tok + 1)
    # Keys up to the tile's first row's position are visible to all its rows.
    open_end = tl.minimum(kv_end, ctx - q_len + row0 // G + 1)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    m_i, l_i, acc = _attend_keys(q, q_pos, 0, kv_end, open_end, bt_row, k_ptr + kv_head * stride_kh,
                                 v_ptr + kv_head * stride_vh, qk_scale, stride_kb, stride_ks, stride_vb, stride_vs,
                                 dims, d_ok, BLOCK_SIZE, DOT_PRECISION, WHILE_LOOP, BLOCK_M, BLOCK_D, BLOCK_N,
                                 HEAD_DIM == BLOCK_D)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # no visible key (padding): 0, not 0 / 0
    out = out * v_scale  # exact for 1.0: a cache in q's dtype gets the same output as without scales
    o_ptrs = out_ptr + q_rows[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def decode_splits(seqs: int, kv_heads: int, multiprocessors: int) -> int:
    """How many programs share the keys of each (sequence, KV head) of a decode-only batch: enough to give
    the GPU about two programs per SM, capped at MAX_SPLITS; 1 (no split) when it is already that busy."""
    splits = min(MAX_SPLITS, (2 * multiprocessors) // max(seqs * kv_heads, 1))
    return splits if splits >= 2 else 1


def multiprocessors(device: torch.device) -> int:
    return INTERPRET_MULTIPROCESSORS if interpreting() else cuda_multiprocessors(device)


def decode_kernel(max_query_len: int, fp8_cache: bool, splits: int) -> str:
    """The kernel of a batch: "prefill" (this module's, any batch with a longer query), "split"
    (paged_attention_split.py) or DECODE_KERNEL's for an unsplit decode-only batch."""
    if max_query_len > 1:
        return "prefill"
    return "split" if splits > 1 else DECODE_KERNEL["fp8" if fp8_cache else "model_dtype"]


def launch_for(kernel: str, fp8_cache: bool = False) -> LaunchConfig:
    """Tiles for a batch that takes `kernel` (decode_kernel's answer for it)."""
    if kernel == "prefill":
        return LAUNCH["prefill_fp8" if fp8_cache else "prefill"]
    if kernel == "keys":
        return LAUNCH["decode_rows_fp8" if fp8_cache else "decode_rows"]
    if fp8_cache:
        return LAUNCH["decode_fp8"]
    return LAUNCH["decode_split" if kernel == "split" else "decode"]


def _check(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
           context_lens: torch.Tensor, query_start: torch.Tensor, max_query_len: int, scale: float,
           out: torch.Tensor | None, k_scale: float, v_scale: float, num_splits: int | None) -> None:
    check_tensor("q", q, FLOAT_DTYPES, 3)
    check_tensor("k_cache", k_cache, (q.dtype, KV_FP8), 4, like=q)
    check_tensor("v_cache", v_cache, (k_cache.dtype,), 4, like=q)
    check_tensor("block_tables", block_tables, (torch.int32,), 2, like=q)
    check_tensor("context_lens", context_lens, (torch.int32,), 1, like=q)
    check_tensor("query_start", query_start, (torch.int32,), 1, like=q)
    tokens, heads, head_dim = q.shape
    _, _, kv_heads, cache_head_dim = k_cache.shape
    check_shape("v_cache", v_cache, tuple(k_cache.shape), "k_cache's shape")
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"k_cache: its {kv_heads} KV heads must divide q's {heads} heads")
    if cache_head_dim != head_dim:
        raise ValueError(f"k_cache: head_dim {cache_head_dim} differs from q's {head_dim}")
    seqs = block_tables.shape[0]
    check_shape("context_lens", context_lens, (seqs,), "one per block_tables row")
    check_shape("query_start", query_start, (seqs + 1,), "block_tables rows + 1")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("block_tables", block_tables),
                    ("context_lens", context_lens), ("query_start", query_start)):
        check_last_dim_contiguous(name, t)
    if isinstance(max_query_len, bool) or not isinstance(max_query_len, int) or max_query_len < 0:
        raise ValueError(f"max_query_len: must be a non-negative Python int, got {max_query_len!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"scale: must be a Python float, got {type(scale).__name__}")
    check_kv_scales(k_cache.dtype, k_scale, v_scale)
    if out is not None:
        check_tensor("out", out, (q.dtype,), 3, like=q)
        check_shape("out", out, tuple(q.shape), "q's shape")
        check_last_dim_contiguous("out", out)
    if num_splits is not None:
        if isinstance(num_splits, bool) or not isinstance(num_splits, int) or not 1 <= num_splits <= MAX_SPLITS:
            raise ValueError(f"num_splits: must be None or a Python int from 1 to {MAX_SPLITS}, got {num_splits!r}")
        if num_splits > 1 and max_query_len > 1:
            raise ValueError(f"num_splits: keys are split only in decode-only batches (max_query_len 1), "
                             f"got {num_splits} splits with max_query_len {max_query_len}")


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                    context_lens: torch.Tensor, query_start: torch.Tensor, max_query_len: int, scale: float,
                    out: torch.Tensor | None = None, k_scale: float = 1.0, v_scale: float = 1.0,
                    num_splits: int | None = None, new_kv: NewKV | None = None, decode_seqs: int = 0) -> torch.Tensor:
    """Causal attention of each sequence's queries over its cached keys and values.

    q: [tokens, heads, head_dim]; k_cache, v_cache: [num_blocks, block_size, kv_heads, head_dim] holding
    this step's K/V already, in q's dtype, or both float8_e4m3fn holding K / k_scale and V / v_scale
    (Python floats; 1.0 for any other cache); block_tables: [seqs, max_blocks] int32; context_lens:
    [seqs] int32, the cached tokens including this step's; query_start: [seqs + 1] int32, sequence s's
    queries being q[query_start[s]:query_start[s + 1]]; max_query_len: >= the longest of those (a Python
    int, so no device sync). num_splits: how many programs share each (sequence, KV head)'s keys in a
    decode-only batch (max_query_len 1); None picks it from the batch's shape and the GPU (decode_splits),
    an int from 1 (no split) to MAX_SPLITS forces it (tests, benchmarks). Returns out ([tokens, heads,
    head_dim], new unless given): rows of sequences with context_len 0 are zeros; rows at or past
    query_start[-1] are left unwritten. new_kv: this step's K/V, uncached, and q unrotated (NewKV); q is
    then left rotated or as it was. decode_seqs: the batch's first decode_seqs sequences have one query each
    (decodes; the caller knows, a wrong count gives wrong rows): a mixed batch attends them with a decode
    kernel, whose tiles suit one query over a long context, and only the rest with the prefill kernel.
    """
    _check(q, k_cache, v_cache, block_tables, context_lens, query_start, max_query_len, scale, out, k_scale, v_scale,
           num_splits)
    seqs = block_tables.shape[0]
    if isinstance(decode_seqs, bool) or not isinstance(decode_seqs, int) or not 0 <= decode_seqs <= seqs:
        raise ValueError(f"decode_seqs: must be a Python int from 0 to the {seqs} sequences, got {decode_seqs!r}")
    if new_kv is not None:
        if not isinstance(new_kv, NewKV):
            raise ValueError(f"new_kv: must be a NewKV, got {type(new_kv).__name__}")
        check_rope_operands(q, new_kv.k, new_kv.positions, new_kv.cos, new_kv.sin)
        check_store_operands(new_kv.k, new_kv.v, k_cache, v_cache, new_kv.slot_mapping)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    tokens, heads, head_dim = q.shape
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = heads // kv_heads
    empty = tokens == 0 or seqs == 0 or max_query_len == 0 or head_dim == 0
    if num_splits is None:
        num_splits = decode_splits(seqs, kv_heads, multiprocessors(q.device)) if max_query_len == 1 else 1
    if new_kv is not None and (num_splits == 1 or empty):
        rope_store_kv(q, new_kv.k, new_kv.v, k_cache, v_cache, new_kv.slot_mapping, new_kv.positions, new_kv.cos,
                      new_kv.sin, k_scale, v_scale)
        new_kv = None
    if empty:
        return out
    if max_query_len > 1 and decode_seqs > 0:
        d = decode_seqs
        paged_attention(q, k_cache, v_cache, block_tables[:d], context_lens[:d], query_start[:d + 1], 1, scale,
                        out=out, k_scale=k_scale, v_scale=v_scale)
        if d == seqs:
            return out
        block_tables, context_lens, query_start, seqs = block_tables[d:], context_lens[d:], query_start[d:], seqs - d
    fp8_cache = k_cache.dtype == KV_FP8
    kernel = decode_kernel(max_query_len, fp8_cache, num_splits)
    launch = launch_for(kernel, fp8_cache)
    block_n = INTERPRET_BLOCK_N if interpreting() else launch.block_n
    # float32 tiles are twice the bytes: 3 stages of 64x128 K and V would not fit an H100's shared memory.
    stages = min(launch.num_stages, 2) if q.dtype == torch.float32 else launch.num_stages
    qk_scale = float(scale) * k_scale * LOG2E
    kernel_args = dict(
        G=group, BLOCK_SIZE=block_size, HEAD_DIM=head_dim, BLOCK_D=max(16, next_power_of_2(head_dim)),
        # fp32 without TF32 (torch's default), so a float32 model matches its float32 reference.
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        WHILE_LOOP=interpreting() and INTERPRET_WITH_WHILE_LOOP,
        FP16_DOTS=fp8_cache and q.dtype in (torch.bfloat16, torch.float16),
        BLOCK_N=block_n, num_warps=launch.num_warps, num_stages=stages, **pdl_launch(q.device))
    if kernel == "split":
        # Imported here: that module imports _attend_keys from this one.
        from engine.layers.attention.triton.paged_attention_split import split_paged_attention
        split_paged_attention(q, k_cache, v_cache, out, block_tables, context_lens, query_start, qk_scale,
                              float(v_scale), splits=num_splits, block_m=launch.block_m, new_kv=new_kv,
                              k_scale=float(k_scale), **kernel_args)
        return out
    if kernel == "keys":
        launch_decode_by_rows(q, k_cache, v_cache, out, block_tables, context_lens, query_start, qk_scale,
                              float(v_scale), **kernel_args)
        return out
    grid = (seqs, kv_heads, triton.cdiv(max_query_len * group, launch.block_m))
    _paged_attention_kernel[grid](
        q, k_cache, v_cache, out, block_tables, context_lens, query_start, qk_scale, float(v_scale),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        BLOCK_M=launch.block_m, **kernel_args)
    return out
