"""Greedy sampling in one launch: each row's argmax over the vocabulary, with some tokens banned (the
stop and EOS ids a sequence may not emit before its min_tokens).

Torch took eight kernels for this at batch 1 (a clone and an indexed write of -inf for the bans, then a
two-pass argmax, since torch reduces one 125k-entry row in a single thread block: chunk maxima, their
maximum, two gathers and two elementwise ops), ~22 us of an H100's time per 7B decode step plus the gaps
between them; this launch takes 3.9 us (bench/step_timeline.py). Each program reduces one chunk of a
row and stores its (maximum, first index); the row's last program to arrive reduces those partials in
chunk order (the arrival counters of engine/layers/triton/split_k.py, reset by that program) and stores
the token.

Torch's semantics, bit for bit: the first index of the largest value, NaN counting as larger than
anything (the first NaN wins); a banned token is -inf, so a row whose every token is banned or -inf
gives index 0.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.layers.kernel_checks import check_tensor, next_power_of_2
from engine.layers.triton.split_k import MAX_ROW_TILES_SPLIT, arrival_counters

BLOCK = 2048  # vocabulary entries per program: 62 programs for a 125,696-entry row
NUM_WARPS = 4


@triton.jit
def _first_max(values, index, ok, BIG: tl.constexpr):
    """(value, index) of the first maximum of values where ok, NaN largest; (-inf, BIG) if none is ok."""
    values = tl.where(ok, values, float("-inf"))
    is_nan = values != values
    first_nan = tl.min(tl.where(is_nan & ok, index, BIG), axis=0)
    top = tl.max(tl.where(is_nan, float("-inf"), values), axis=0)
    # An all -inf stretch: top is -inf and its first entry the answer, as torch gives.
    first_top = tl.min(tl.where(ok & (values == top), index, BIG), axis=0)
    has_nan = first_nan < BIG
    return tl.where(has_nan, float("nan"), top), tl.where(has_nan, first_nan, first_top)


@triton.jit
def _argmax_kernel(logits_ptr, banned_ptr, part_val_ptr, part_idx_ptr, count_ptr, out_ptr, V, stride_row,
                   num_banned, BLOCK: tl.constexpr, CHUNKS: tl.constexpr,
                   CHUNKS_POW2: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    ok = offs < V
    values = tl.load(logits_ptr + row.to(tl.int64) * stride_row + offs, mask=ok, other=float("-inf")).to(tl.float32)
    for b in range(num_banned):  # a few ids (stop and EOS tokens); a run-time count: one compiled kernel
        token = tl.load(banned_ptr + row * num_banned + b)
        values = tl.where(offs == token, float("-inf"), values)
    best, first = _first_max(values, offs, ok, 2147483647)
    tl.store(part_val_ptr + row * CHUNKS + chunk, best)
    tl.store(part_idx_ptr + row * CHUNKS + chunk, first)
    tl.debug_barrier()
    counter = count_ptr + row
    if tl.atomic_add(counter, 1, sem="acq_rel") == CHUNKS - 1:
        c = tl.arange(0, CHUNKS_POW2)
        c_ok = c < CHUNKS
        vals = tl.load(part_val_ptr + row * CHUNKS + c, mask=c_ok, other=float("-inf"), cache_modifier=".cg")
        idx = tl.load(part_idx_ptr + row * CHUNKS + c, mask=c_ok, other=0, cache_modifier=".cg")
        _, winner = _first_max(vals, c, c_ok, CHUNKS_POW2)  # chunks in index order: the first is the first
        tl.store(out_ptr + row, tl.sum(tl.where(c == winner, idx, 0), axis=0).to(tl.int64))
        tl.atomic_xchg(counter, 0, sem="relaxed")


def greedy_tokens(logits: torch.Tensor, banned: torch.Tensor | None = None) -> torch.Tensor:
    """logits: [rows, vocab] float (last dim contiguous; no rows: nothing to launch); banned: [rows, n] int64
    token ids that row may not take (-1: none), or None -> [rows] int64, each row's argmax with its banned
    tokens at -inf."""
    check_tensor("logits", logits, None, 2)
    rows, vocab = logits.shape
    if logits.stride(1) != 1:
        raise ValueError(f"logits: its last dim must be contiguous, got strides {logits.stride()}")
    if vocab < 1:
        raise ValueError(f"logits: must have a vocabulary, got shape {tuple(logits.shape)}")
    if banned is not None:
        check_tensor("banned", banned, (torch.int64,), 2, like=logits)
        if banned.shape[0] != rows or not banned.is_contiguous():
            raise ValueError(f"banned: must be a contiguous [{rows}, n] tensor, got shape {tuple(banned.shape)}")
    chunks = triton.cdiv(vocab, BLOCK)
    part_val = torch.empty((rows, chunks), dtype=torch.float32, device=logits.device)
    part_idx = torch.empty((rows, chunks), dtype=torch.int32, device=logits.device)
    out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    if rows == 0:  # a step whose sequences all end mid-prompt samples nothing
        return out
    num_banned = 0 if banned is None else banned.shape[1]
    banned = out if num_banned == 0 else banned  # never read then; a real pointer all the same
    for start in range(0, rows, MAX_ROW_TILES_SPLIT):  # one counter per row of a launch
        end = min(rows, start + MAX_ROW_TILES_SPLIT)
        _argmax_kernel[(end - start, chunks)](
            logits[start:end], banned[start:end] if num_banned else banned, part_val[start:end], part_idx[start:end],
            arrival_counters(logits.device), out[start:end], vocab, logits.stride(0), num_banned,
            BLOCK=BLOCK, CHUNKS=chunks, CHUNKS_POW2=next_power_of_2(chunks), num_warps=NUM_WARPS)
    return out
