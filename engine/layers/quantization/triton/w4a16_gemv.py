"""W4A16 GEMV for decode (M <= GEMV_MAX_M): y = x @ w.T, w[n, k] = (q[n, k] - z[n, g]) * s[n, g], in
the int4 format of engine.layers.quantization.int4 (two values per byte, even column low), without
tensor cores.

Each program owns BLOCK_N whole weight rows and reads them once, BLOCK_W int32 words (8 columns each)
per row per step. At batch 1 an int4 GEMV is bound by the integer work of unpacking, not by memory
(bench/quant_gemm_sweep.py --gemv: a byte-wise kernel with a subtraction per nibble streamed 0.9-1.4
TB/s on an H200), so each nibble costs two integer ops and one FMA: it is shifted into the mantissa of
128.0, giving the float 128 + q with no conversion, and the 128 and the zero point come off once per
group: sum((q - z) * x) * s = (sum((128 + q) * x) - (128 + z) * sum(x)) * s.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from engine.layers.quantization.triton import check_int4_operands, interpreting, multiprocessors

GEMV_MAX_M = 4
# (BLOCK_N, BLOCK_W, num_warps, num_stages), BLOCK_W in int32 words (8 columns each): candidates for
# the autotuner, from bench/quant_gemm_sweep.py --gemv on an H200 over the 7B shapes (group size 128).
CONFIGS = [
    (64, 64, 4, 1),
    (64, 32, 4, 1),
    (32, 64, 4, 1),
]
INTERPRET_BLOCKS = {"BLOCK_N": 16, "BLOCK_W": 4}  # small tiles exercise the edge masks


def gemv_supports(k: int) -> bool:
    """Rows of whole int32 words: K a multiple of 8 (every real model's hidden and MLP sizes)."""
    return k % 8 == 0


def prefers_gemv(m: int, n: int, k: int, device: torch.device) -> bool:
    """Whether decode should take the GEMV over the split-K GEMM (w4a16.py). The GEMV is fastest with
    tall tiles (64 rows) and has no split-K, so it wins only where N alone gives every multiprocessor a
    tile: on an H200 (bench/quant_gemm_sweep.py --gemv, M=1) 17.0 vs 23.6 us for a 7B qkv (N=12288),
    26.4 vs 40.3 gate_up, 112 vs 163 lm_head, but 12.0 vs 14.2 o_proj and 34.4 vs 27.1 down (N=4096)."""
    return 1 <= m <= GEMV_MAX_M and gemv_supports(k) and triton.cdiv(n, 64) >= multiprocessors(device)


@triton.jit
def _biased_nibble(words, i: tl.constexpr):
    """Nibble i of each int32 word as the float32 128 + nibble: the nibble lands in mantissa bits 16-19
    of 128.0 (0x43000000), two integer ops (a shift, then an and-or) and no conversion or subtraction;
    the 128 comes off once per group, with the zero point."""
    if i < 4:
        shifted = words << (16 - 4 * i)
    elif i == 4:
        shifted = words
    else:
        shifted = words >> (4 * i - 16)
    return ((shifted & 0x000F0000) | 0x43000000).to(tl.float32, bitcast=True)


@triton.jit
def _w4a16_gemv_kernel(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, M, N,
                       stride_xm, stride_qn, stride_sn, stride_sg, stride_zn, stride_zg, stride_ym,
                       K: tl.constexpr, GROUP_SIZE: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    # q is read as int32 words, 8 columns each: nibble i of word j is column 8j + i (bytes are
    # little-endian, the even column in a byte's low nibble). A tile of BLOCK_W words holds whole
    # groups (GROUPS of them) or lies inside one (GROUPS = 1): the wrapper picks BLOCK_W so. K and
    # GROUP_SIZE are compile-time constants (a model has only a few).
    KW: tl.constexpr = K // 8  # words per weight row (the wrapper requires K % 8 == 0)
    GROUPS: tl.constexpr = (8 * BLOCK_W + GROUP_SIZE - 1) // GROUP_SIZE  # 1 inside a group
    NUM_GROUPS: tl.constexpr = (K + GROUP_SIZE - 1) // GROUP_SIZE
    WORDS_PER_GROUP: tl.constexpr = BLOCK_W // GROUPS
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_w = tl.arange(0, BLOCK_W)
    offs_g = tl.arange(0, GROUPS)
    offs_m = tl.arange(0, BLOCK_M)
    n_ok = offs_n < N
    q_ptrs = q_ptr + offs_n[:, None] * stride_qn + offs_w[None, :]  # [BLOCK_N, BLOCK_W]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for w0 in range(0, KW, BLOCK_W):
        w_ok = w0 + offs_w < KW
        words = tl.load(q_ptrs, mask=n_ok[:, None] & w_ok[None, :], other=0)
        g = 8 * w0 // GROUP_SIZE + offs_g  # [GROUPS]
        gn_ok = n_ok[:, None] & (g < NUM_GROUPS)[None, :]
        s = tl.load(s_ptr + offs_n[:, None] * stride_sn + g[None, :] * stride_sg, mask=gn_ok, other=0.0).to(tl.float32)
        # sum((128 + q - 128 - z) * x) = sum((128 + q) * x) - (128 + z) * sum(x)
        z = tl.load(z_ptr + offs_n[:, None] * stride_zn + g[None, :] * stride_zg, mask=gn_ok, other=0).to(tl.float32) + 128.0
        cols = 8 * (w0 + offs_w)  # [BLOCK_W], the first column of each word
        for m in tl.static_range(BLOCK_M):
            x_ok = w_ok & (offs_w * 0 + m < M)  # vectors: the interpreter takes no scalar mask
            x_row = x_ptr + m * stride_xm + cols
            prod = tl.zeros((BLOCK_N, BLOCK_W), dtype=tl.float32)
            xsum = tl.zeros((BLOCK_W,), dtype=tl.float32)
            for i in tl.static_range(8):
                x_i = tl.load(x_row + i, mask=x_ok, other=0.0).to(tl.float32)
                prod += _biased_nibble(words, i) * x_i[None, :]
                xsum += x_i
            if GROUPS == 1:
                part = tl.sum(s, axis=1) * (tl.sum(prod, axis=1) - tl.sum(z, axis=1) * tl.sum(xsum, axis=0))
            else:
                per_group = tl.sum(tl.reshape(prod, (BLOCK_N, GROUPS, WORDS_PER_GROUP)), axis=2)
                xsum_group = tl.sum(tl.reshape(xsum, (GROUPS, WORDS_PER_GROUP)), axis=1)
                part = tl.sum(s * (per_group - z * xsum_group[None, :]), axis=1)  # [BLOCK_N]
            if BLOCK_M == 1:
                acc += part[None, :]
            else:
                acc = tl.where(offs_m[:, None] == m, acc + part[None, :], acc)
        q_ptrs += BLOCK_W
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(offs_m < M)[:, None] & n_ok[None, :])


def tile_fits(block_w: int, group_size: int) -> bool:
    """A tile of block_w words must hold whole groups or lie inside one."""
    return (8 * block_w) % group_size == 0 or (group_size // 8) % block_w == 0


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    kept = [c for c in configs if tile_fits(c.kwargs["BLOCK_W"], named_args["GROUP_SIZE"])]
    if kept:
        return kept
    # An unusual group size (96: 12 words): the largest power of two that divides its words.
    words = named_args["GROUP_SIZE"] // 8
    return [triton.Config({"BLOCK_N": 16, "BLOCK_W": words & -words}, num_warps=4, num_stages=1)]


@functools.cache
def _autotuned() -> triton.runtime.Autotuner:
    configs = [triton.Config({"BLOCK_N": bn, "BLOCK_W": bw}, num_warps=w, num_stages=s) for bn, bw, w, s in CONFIGS]
    return triton.autotune(configs=configs, key=["BLOCK_M", "N", "K", "GROUP_SIZE"],
                           prune_configs_by={"early_config_prune": _prune})(_w4a16_gemv_kernel)


def w4a16_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
               blocks: dict | None = None) -> torch.Tensor:
    """x: [M, K] float16/bfloat16/float32 with M <= GEMV_MAX_M and K % 8 == 0, qweight: uint8 [N, K/2]
    contiguous, scales: [N, G] float, zeros: uint8 [N, G], G = ceil(K / group_size) -> x @ w.T: [M, N] in
    x.dtype. blocks: a fixed launch ({"BLOCK_N", "BLOCK_W", "num_warps", "num_stages"}) instead of the
    autotuned ones."""
    check_int4_operands(x, qweight, scales, zeros, group_size)
    m, k = x.shape
    n = qweight.shape[0]
    if not 1 <= m <= GEMV_MAX_M:
        raise ValueError(f"x: the GEMV takes 1..{GEMV_MAX_M} rows, got M={m}")
    if not gemv_supports(k):
        raise ValueError(f"x: the GEMV reads whole int32 words of weights, so K must be a multiple of 8, got K={k}")
    if blocks is not None and not tile_fits(blocks["BLOCK_W"], group_size):
        raise ValueError(f"blocks: BLOCK_W={blocks['BLOCK_W']} words neither holds whole groups of "
                         f"{group_size} nor lies inside one")
    if x.stride(1) != 1:
        x = x.contiguous()
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if n == 0:
        return y
    words = qweight.view(torch.int32)  # [N, K/8]: rows of K/2 bytes, a multiple of 4
    args = (x, words, scales, zeros, y, m, n, x.stride(0), words.stride(0), scales.stride(0), scales.stride(1),
            zeros.stride(0), zeros.stride(1), y.stride(0), k, group_size, triton.next_power_of_2(m))
    if interpreting() and blocks is None:
        blocks = INTERPRET_BLOCKS
    if blocks is not None:
        _w4a16_gemv_kernel[(triton.cdiv(n, blocks["BLOCK_N"]),)](*args, **blocks)
    else:
        _autotuned()[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](*args)
    return y
