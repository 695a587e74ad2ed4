"""Split-K for the decode GEMVs in one launch: a GPU whose row tiles alone leave SMs idle (an int4 7B
o_proj or down_proj in 64-row tiles: 64 tiles on 132 SMs) gets K split over several programs per row
tile. Each stores its float32 partial and counts its arrival on the tile's counter; the last to arrive
sums the partials in split order (the same result every run, unlike atomics on the output) and resets
the counter for the next launch.
A separate reduction would cost one or two more launches per layer (cuBLAS's split-K reduce kernel:
1.75 us each, twice a layer in a bf16 7B decode step on an H100, plus the gaps between launches)."""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from engine.layers.quantization.triton import multiprocessors
from engine.layers.triton.activation import store_rows

# K splits until about this many programs per multiprocessor run; each split keeps at least
# MIN_TILES_PER_SPLIT tiles of K, so its partial store and the final sum stay small next to its reads.
PROGRAMS_PER_SM = 4
MAX_SPLIT_K = 16
MIN_TILES_PER_SPLIT = 2
MAX_ROW_TILES_SPLIT = 4096  # row tiles the counters cover (a split N has < PROGRAMS_PER_SM * SMs of them)


def split_for(n_tiles: int, k_tiles: int, device: torch.device,
              min_tiles_per_split: int = MIN_TILES_PER_SPLIT) -> int:
    """K splits so that about PROGRAMS_PER_SM programs per multiprocessor run, each keeping at least
    min_tiles_per_split tiles of K (1: no split)."""
    target = PROGRAMS_PER_SM * multiprocessors(device)
    split = 1
    while (n_tiles * split < target and split < MAX_SPLIT_K and k_tiles >= 2 * split * min_tiles_per_split
           and n_tiles <= MAX_ROW_TILES_SPLIT):
        split *= 2
    return split


def check_split(split: object, n_tiles: int) -> int:
    if (isinstance(split, bool) or not isinstance(split, int) or not 1 <= split <= MAX_SPLIT_K
            or (split > 1 and n_tiles > MAX_ROW_TILES_SPLIT)):
        raise ValueError(f"blocks: SPLIT_K must be 1..{MAX_SPLIT_K} (1 above {MAX_ROW_TILES_SPLIT} row tiles), "
                         f"got {split!r}")
    return split


def split_buffers(split: int, m: int, n: int, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(partials [split, m, n] float32, counters) for a split launch; y twice (never read) for none."""
    if split == 1:
        return y, y
    return torch.empty((split, m, n), dtype=torch.float32, device=y.device), arrival_counters(y.device)


@functools.cache
def arrival_counters(device: torch.device) -> torch.Tensor:
    """MAX_ROW_TILES_SPLIT arrival counters, zero between launches: each launch's last program of a tile
    resets its own, so every split kernel (these GEMVs, split-KV attention) shares them. Made by the first
    split launch, which runs before any CUDA-graph capture (warm-up)."""
    return torch.zeros(MAX_ROW_TILES_SPLIT, dtype=torch.int32, device=device)


@triton.jit
def store_or_reduce(acc, y_ptr, part_ptr, count_ptr, M, N, stride_ym, offs_m, offs_n, mask,
                    SPLIT_K: tl.constexpr, GATED: tl.constexpr):
    """acc: [BLOCK_M, BLOCK_N] float32, this program's sum over its split of K for the weight rows offs_n.
    Unsplit: stored as y (store_rows; GATED: silu(gate) * up). Split: stored as a partial; the tile's last
    program to arrive stores y from the partials' sum."""
    if SPLIT_K == 1:
        store_rows(acc, y_ptr, M, N, stride_ym, offs_m, offs_n, mask, GATED)
    else:
        part_tile = part_ptr + offs_m[:, None] * N + offs_n[None, :]  # part: [SPLIT_K, M, N]
        tl.store(part_tile + tl.program_id(1) * M * N, acc, mask=mask)
        # Every thread's partial lands before one thread counts the arrival (barrier, then a release);
        # the last to arrive acquires, so it reads every partial.
        tl.debug_barrier()
        counter = count_ptr + tl.program_id(0)
        if tl.atomic_add(counter, 1, sem="acq_rel") == SPLIT_K - 1:
            total = tl.zeros(acc.shape, dtype=tl.float32)
            for j in tl.static_range(SPLIT_K):  # split order: the same sum every run
                total += tl.load(part_tile + j * M * N, mask=mask, other=0.0, cache_modifier=".cg")
            store_rows(total, y_ptr, M, N, stride_ym, offs_m, offs_n, mask, GATED)
            tl.atomic_xchg(counter, 0, sem="relaxed")
