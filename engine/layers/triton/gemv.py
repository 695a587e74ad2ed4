"""Dense GEMV for decode (M <= GEMV_MAX_M rows): y = x @ w.T with w in x's dtype (bf16 / fp16), the CUDA
path of UnquantizedLinear at decode sizes.

At batch 1 a linear layer only streams its weights, and cuBLAS does not stream them at full speed on a
7B model's shapes: on an H100 (bench/quant_gemm_sweep.py --dense, under CUDA graphs) qkv 36.6 us against
34.6 here, gate_up 70.4 against 59.5, down 36.0 against 33.1, lm_head 356 against 325, and it runs the
4096-row o_proj and down as a split-K GEMM plus a separate reduction kernel (1.75 us a launch, twice a
layer). Each program owns BLOCK_N whole weight rows and reads them once, BLOCK_K columns per row per step
(16-byte loads), accumulating per (row, column) in float32 and reducing across the tile once at the end
(batch 1), or per step for each of the 2-4 rows of x (the weight tile is read once for all of them).
Few rows per program give even a 4096-row layer over a thousand programs; a smaller N splits K in the
same launch (split_k.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.layers.triton import check_last_dim_contiguous, check_tensor, interpreting
from engine.layers.triton.activation import check_gated, gated_rows, output_tiles
from engine.layers.triton.pdl import pdl_launch, wait_for_previous
from engine.layers.triton.split_k import check_split, split_buffers, split_for, store_or_reduce

GEMV_MAX_M = 4
GEMV_DTYPES = (torch.float16, torch.bfloat16)
# Launches by N, the fastest in the sweep above: longer column steps and 8 warps for wide layers.
WIDE_LAUNCH = {"BLOCK_N": 8, "BLOCK_K": 1024, "num_warps": 8}
SHORT_LAUNCH = {"BLOCK_N": 4, "BLOCK_K": 512, "num_warps": 4}
SHORT_N = 8192
INTERPRET_BLOCKS = {"BLOCK_N": 8, "BLOCK_K": 32}  # small tiles exercise the edge masks


def prefers_gemv(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a linear layer on CUDA takes this GEMV over cuBLAS for these operands."""
    return (x.is_cuda and x.dim() == 2 and 1 <= x.shape[0] <= GEMV_MAX_M and x.dtype in GEMV_DTYPES
            and weight.dtype == x.dtype)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, y_ptr, part_ptr, count_ptr, M, N, stride_xm, stride_wn, stride_ym,
                 K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 SPLIT_K: tl.constexpr, GATED: tl.constexpr, USE_PDL: tl.constexpr, NUM_STAGES: tl.constexpr = 1):
    # x: [M, K]; w: [N, K] (rows stride_wn apart, columns contiguous); y: [M, N], or [M, N / 2] GATED
    TILES_PER_SPLIT: tl.constexpr = ((K + BLOCK_K - 1) // BLOCK_K + SPLIT_K - 1) // SPLIT_K
    k_begin = tl.program_id(1) * (TILES_PER_SPLIT * BLOCK_K)
    offs_n, n_ok = gated_rows(N, BLOCK_N, GATED)
    offs_k = tl.arange(0, BLOCK_K)
    offs_m = tl.arange(0, BLOCK_M)
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn  # [BLOCK_N, 1]
    wait_for_previous(USE_PDL)
    acc_cols = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)  # batch 1: per (row, column)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in tl.range(TILES_PER_SPLIT, num_stages=NUM_STAGES):  # a split's tiles past K are masked
        k = k_begin + t * BLOCK_K + offs_k
        k_ok = k < K
        w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        if BLOCK_M == 1:
            acc_cols += w * tl.load(x_ptr + k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
        else:
            for m in tl.static_range(BLOCK_M):
                x = tl.load(x_ptr + m * stride_xm + k, mask=k_ok & (offs_k * 0 + m < M), other=0.0).to(tl.float32)
                acc = tl.where(offs_m[:, None] == m, acc + tl.sum(w * x[None, :], axis=1)[None, :], acc)
    if BLOCK_M == 1:
        acc = tl.sum(acc_cols, axis=1)[None, :]
    store_or_reduce(acc, y_ptr, part_ptr, count_ptr, M, N, stride_ym, offs_m, offs_n,
                    (offs_m < M)[:, None] & n_ok[None, :], SPLIT_K, GATED)


def gemv(x: torch.Tensor, weight: torch.Tensor, blocks: dict | None = None, gated: bool = False) -> torch.Tensor:
    """x: [M, K] float16/bfloat16 with 1 <= M <= GEMV_MAX_M, weight: [N, K] in x's dtype, last dim
    contiguous -> x @ weight.T: [M, N]; gated (weight = [gate; up], N even): silu(gate) * up of it, [M, N / 2],
    with the bits of silu_and_mul after the plain GEMV. blocks: a launch ({"BLOCK_N", "BLOCK_K", "num_warps"},
    optionally "NUM_STAGES" (weight tiles staged through shared memory that many steps ahead; the launches
    for N keep 1, which measured as fast on the 7B shapes) and "SPLIT_K", else split_for's) instead of the
    one for N."""
    check_tensor("x", x, GEMV_DTYPES, 2)
    check_tensor("weight", weight, (x.dtype,), 2, like=x)
    m, k = x.shape
    n = weight.shape[0]
    if not 1 <= m <= GEMV_MAX_M:
        raise ValueError(f"x: the GEMV takes 1..{GEMV_MAX_M} rows, got M={m}")
    if weight.shape[1] != k:
        raise ValueError(f"weight: has K={weight.shape[1]} input columns, but x has K={k}")
    check_last_dim_contiguous("weight", weight)
    check_gated(gated, n)
    if x.stride(1) != 1:
        x = x.contiguous()
    y = torch.empty((m, n // 2 if gated else n), dtype=x.dtype, device=x.device)
    if n == 0:
        return y
    if blocks is None:
        blocks = INTERPRET_BLOCKS if interpreting() else WIDE_LAUNCH if n > SHORT_N else SHORT_LAUNCH
    launch = dict(blocks)
    n_tiles = output_tiles(n, launch["BLOCK_N"], gated)
    split = check_split(launch.pop("SPLIT_K", None) or split_for(n_tiles, triton.cdiv(k, launch["BLOCK_K"]), x.device),
                        n_tiles)
    part, counters = split_buffers(split, m, n, y)
    _gemv_kernel[(n_tiles, split)](x, weight, y, part, counters, m, n, x.stride(0), weight.stride(0), y.stride(0),
                                   k, triton.next_power_of_2(m), SPLIT_K=split, GATED=gated, **launch,
                                   **pdl_launch(x.device))
    return y
