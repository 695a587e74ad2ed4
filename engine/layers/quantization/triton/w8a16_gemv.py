"""W8A16 GEMV for decode (M <= GEMV_MAX_M): y = x @ (q * s[:, None]).T without tensor cores.

At a handful of rows the product only streams the weights, and the tensor-core GEMM (w8a16.py) pads
every row tile to 16 and walks K in series per output tile. Here each program owns BLOCK_N whole
weight rows and reads them once, BLOCK_K contiguous bytes per row per step (128-bit loads), with every
row of x applied to the tile while it is in registers. The int8 -> float conversion goes through the
float32 mantissa ((q + 128) | 0x4B000000 is 2^23 + 128 + q exactly): integer ops at full rate instead
of the quarter-rate I2F, which at 3+ TB/s of int8 would otherwise be the bottleneck.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from engine.layers.quantization.triton import check_int8_operands, interpreting
from engine.layers.triton.activation import check_gated, gated_rows, output_tiles, store_rows
from engine.layers.triton.pdl import pdl_launch, wait_for_previous

GEMV_MAX_M = 4
# (BLOCK_N, BLOCK_K, num_warps, NUM_STAGES): candidates for the autotuner, from bench/quant_gemm_sweep.py
# --gemv on an H100 over the 7B shapes. NUM_STAGES > 1 pipelines the weight loads through shared memory
# (cp.async, tl.range's num_stages; the kernel-level num_stages pipelines only loops with a tl.dot):
# qkv 20.2 -> 19.6 us, down 18.6 -> 17.5, gate_up 32.5 -> 32.2; o_proj and lm_head keep 1 stage.
CONFIGS = [
    (8, 2048, 8, 1),
    (4, 2048, 4, 1),
    (4, 2048, 4, 3),
    (8, 1024, 4, 1),
    (8, 1024, 4, 3),
    (16, 1024, 4, 3),
    (16, 512, 8, 1),
]
INTERPRET_BLOCKS = {"BLOCK_N": 16, "BLOCK_K": 32}  # small tiles exercise the edge masks


def prefers_gemv(m: int) -> bool:
    """Whether a layer takes this GEMV over the tensor-core GEMM (w8a16.py) for m rows: decode's few."""
    return 1 <= m <= GEMV_MAX_M


@triton.jit
def _int8_to_float(q):
    """int8 -> float32 through the mantissa: (q ^ 0x80) is q + 128 as a byte, 0..255."""
    biased = (q.to(tl.uint8, bitcast=True) ^ 0x80).to(tl.uint32) | 0x4B000000
    return biased.to(tl.float32, bitcast=True) - 8388736.0


@triton.jit
def _w8a16_gemv_kernel(x_ptr, q_ptr, s_ptr, y_ptr, M, N, stride_xm, stride_qn, stride_s, stride_ym,
                       K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GATED: tl.constexpr, USE_PDL: tl.constexpr, NUM_STAGES: tl.constexpr = 1):
    # y: [M, N], or [M, N / 2] GATED (silu(gate) * up: engine/layers/triton/activation.py)
    offs_n, n_ok = gated_rows(N, BLOCK_N, GATED)
    offs_k = tl.arange(0, BLOCK_K)
    offs_m = tl.arange(0, BLOCK_M)
    q_ptrs = q_ptr + offs_n[:, None] * stride_qn + offs_k[None, :]  # [BLOCK_N, BLOCK_K]
    # The scales before the wait (pdl.py): their round trip then overlaps the previous kernel instead of
    # lengthening this one's tail. (The first weight tile loaded there too made the step slower: 2.80
    # against 2.70 ms, int8_wo 7B, H200.)
    s = tl.load(s_ptr + offs_n * stride_s, mask=n_ok, other=0.0).to(tl.float32)
    wait_for_previous(USE_PDL)
    if BLOCK_M == 1:
        # One row of x: accumulate elementwise and reduce over K once at the end (no shuffles per step).
        acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
            k_ok = k0 + offs_k < K
            w = _int8_to_float(tl.load(q_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0))
            x = tl.load(x_ptr + k0 + offs_k, mask=k_ok, other=0.0).to(tl.float32)
            acc2 += w * x[None, :]
            q_ptrs += BLOCK_K
        acc = tl.sum(acc2, axis=1)[None, :]  # [1, BLOCK_N]
    else:
        # Each weight tile is loaded once and applied to every row of x (unrolled: BLOCK_M <= 4).
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
            k_ok = k0 + offs_k < K
            w = _int8_to_float(tl.load(q_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0))
            for m in tl.static_range(BLOCK_M):
                x = tl.load(x_ptr + m * stride_xm + k0 + offs_k, mask=k_ok & (offs_k * 0 + m < M), other=0.0).to(tl.float32)
                row = tl.sum(w * x[None, :], axis=1)  # [BLOCK_N]
                acc = tl.where(offs_m[:, None] == m, acc + row[None, :], acc)
            q_ptrs += BLOCK_K
    store_rows(acc * s[None, :], y_ptr, M, N, stride_ym, offs_m, offs_n, (offs_m < M)[:, None] & n_ok[None, :], GATED)


@functools.cache
def _autotuned() -> triton.runtime.Autotuner:
    configs = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "NUM_STAGES": s}, num_warps=w) for bn, bk, w, s in CONFIGS]
    return triton.autotune(configs=configs, key=["BLOCK_M", "N", "K", "GATED"])(_w8a16_gemv_kernel)


def w8a16_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
               blocks: dict | None = None, gated: bool = False) -> torch.Tensor:
    """x: [M, K] float16/bfloat16/float32 with M <= GEMV_MAX_M, qweight: int8 [N, K] contiguous,
    scales: [N] float -> x @ (qweight * scales[:, None]).T: [M, N] in x.dtype; gated (rows = [gate; up],
    N even): silu(gate) * up of it, [M, N / 2], with the bits of silu_and_mul after the plain GEMV.
    blocks: a fixed launch ({"BLOCK_N", "BLOCK_K", "num_warps", optionally "NUM_STAGES"}) instead of the
    autotuned ones."""
    check_int8_operands(x, qweight, scales)
    m, k = x.shape
    n = qweight.shape[0]
    if not 1 <= m <= GEMV_MAX_M:
        raise ValueError(f"x: the GEMV takes 1..{GEMV_MAX_M} rows, got M={m}")
    check_gated(gated, n)
    if x.stride(1) != 1:
        x = x.contiguous()
    y = torch.empty((m, n // 2 if gated else n), dtype=x.dtype, device=x.device)
    if n == 0:
        return y
    block_m = triton.next_power_of_2(m)
    args = (x, qweight, scales, y, m, n, x.stride(0), qweight.stride(0), scales.stride(0), y.stride(0), k, block_m)
    launch = dict(GATED=gated, **pdl_launch(x.device))
    if interpreting() and blocks is None:
        blocks = INTERPRET_BLOCKS
    if blocks is not None:
        _w8a16_gemv_kernel[(output_tiles(n, blocks["BLOCK_N"], gated),)](*args, **blocks, **launch)
    else:
        _autotuned()[lambda meta: (output_tiles(n, meta["BLOCK_N"], gated),)](*args, **launch)
    return y
