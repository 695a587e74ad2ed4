"""W4A16 GEMM: y = x @ w.T with w[n, k] = (q[n, k] - zeros[n, g]) * scales[n, g], g = k // group_size,
q packed two per byte, each 32-bit word's nibbles in int4.KERNEL_ORDER where K % 8 == 0 (else the plain
order: even column in the low nibble), as a CUDA int4 layer holds them.

The packed bytes are multiplied as loaded: the wrapper splits x into the columns of the low nibbles and
those of the high ones (one small copy), so each meets its nibbles in one of two tl.dot calls.
On an H200 that halves the kernel's time against interleaving the nibbles (tl.join) or splitting x's
tile in the kernel. A K tile never spans two groups (BLOCK_K divides group_size): the zero point is
subtracted from the integer tile (exact) and the scale applied to the tile's [BLOCK_M, BLOCK_N]
partial product rather than to every weight.

A launch either multiplies x @ w.T or, with SWAP_AB, computes y.T = w @ x.T: the unpacked weights are
then the first operand, which Hopper's wgmma reads from registers, so they go from the unpacking
straight into the MMA instead of through shared memory. On an H100 that is the faster layout from M=64
up (bench/quant_gemm_sweep.py --prefill, a 7B layer, autotuned: M=128 321 -> 253 us, M=2048 -39%), the
plain one at decode sizes; the autotuner picks per M bucket. Tall swapped tiles scale the weights
instead of each tile's partial product (SCALE_WEIGHTS: one accumulator, not two)."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from engine.layers.quantization.int4 import has_kernel_order
from engine.layers.quantization.triton import (DECODE_MAX_M, check_int4_operands, interpreting, m_bucket, reduce_splits,
                                                split_k_for)

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); BLOCK_K must divide group_size, so the 32-wide
# configs keep every group size (a multiple of 32) covered.
CONFIGS = [
    # Decode (M <= 16): narrow N tiles give an H100's 132 SMs enough programs without split-K.
    (16, 32, 128, 4, 4),
    (16, 32, 128, 2, 4),
    (16, 32, 128, 4, 6),
    (16, 64, 128, 4, 4),
    (16, 128, 128, 4, 4),
    (16, 32, 64, 4, 6),
    (16, 64, 32, 4, 4),
    (32, 64, 128, 4, 4),
    (64, 64, 128, 4, 4),
    (64, 128, 32, 4, 4),
    (64, 128, 64, 4, 4),
    (128, 128, 64, 8, 3),
    (128, 256, 64, 8, 3),
]
# Weights as the register operand (SWAP_AB), the H100 sweep's best tiles at M = 64-2048:
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, SCALE_WEIGHTS)
SWAPPED_CONFIGS = [
    (32, 64, 128, 4, 4, False),
    (64, 64, 128, 4, 4, False),
    (64, 64, 128, 4, 3, False),
    (128, 64, 128, 4, 3, False),
    (256, 128, 64, 8, 3, True),
]
INTERPRET_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32}  # small tiles exercise the edge masks
FLOAT32_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32}
# Decode (bf16/fp16, M <= 16) with a long K: one fixed tile (BLOCK_K capped at the group size) plus
# split-K, chosen by bench/quant_gemm_sweep.py on an H200.
DECODE_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 128}
DECODE_LAUNCH = {"num_warps": 4, "num_stages": 8}


@triton.jit
def _offset_nibbles(nib, dtype: tl.constexpr):
    """Integers 0..15 -> 2^e + nib in `dtype`, e = 7 (bf16), 10 (fp16) or 23 (fp32): written into the
    mantissa bits, which skips the int-to-float conversion (a quarter-rate instruction on Hopper)."""
    if dtype == tl.bfloat16:
        return (nib.to(tl.uint16) | 0x4300).to(tl.bfloat16, bitcast=True)
    elif dtype == tl.float16:
        return (nib.to(tl.uint16) | 0x6400).to(tl.float16, bitcast=True)
    else:
        return (nib.to(tl.uint32) | 0x4B000000).to(tl.float32, bitcast=True)


@triton.jit
def _w4a16_kernel(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, M, N, M_BUCKET,
                  stride_xm, stride_qn, stride_sn, stride_sg, stride_zn, stride_zg, stride_ym,
                  K: tl.constexpr, GROUP_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr = 1,
                  SWAP_AB: tl.constexpr = False, SCALE_WEIGHTS: tl.constexpr = False):
    # x: [M, 2, KH], the columns of the low nibbles, then those of the high ones. K and GROUP_SIZE are
    # compile-time constants: a model has only a few, and Triton 3.6's interpreter cannot loop to a
    # run-time bound under numpy >= 2.4.
    # M_BUCKET is only the autotune key. Axis 0 walks M fastest, so the programs that read one weight
    # tile run together and all but the first find it in L2.
    KH: tl.constexpr = (K + 1) // 2  # bytes per weight row
    NUM_GROUPS: tl.constexpr = (K + GROUP_SIZE - 1) // GROUP_SIZE
    # With SPLIT_K > 1, axis 2 picks a range of K (whole tiles, so a tile still never spans two groups)
    # and y is a float32 [SPLIT_K, M, N] buffer of partials.
    TILE: tl.constexpr = BLOCK_K // 2
    KH_SPLIT: tl.constexpr = (KH + SPLIT_K * TILE - 1) // (SPLIT_K * TILE) * TILE
    j_begin = tl.program_id(2) * KH_SPLIT
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = j_begin + tl.arange(0, TILE)  # byte j of a tile: x_low[j] meets its low nibble, x_high[j] its high one
    m_ok = offs_m < M
    n_ok = offs_n < N
    if SWAP_AB:  # y.T = w @ x.T: the weights are the first operand (see the module docstring)
        x_ptrs = x_ptr + offs_m[None, :] * stride_xm + offs_j[:, None]  # [BLOCK_K/2, BLOCK_M] low-nibble columns
        q_ptrs = q_ptr + offs_n[:, None] * stride_qn + offs_j[None, :]  # [BLOCK_N, BLOCK_K/2] bytes
        acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_j[None, :]  # [BLOCK_M, BLOCK_K/2] low-nibble columns
        q_ptrs = q_ptr + offs_n[None, :] * stride_qn + offs_j[:, None]  # [BLOCK_K/2, BLOCK_N] bytes, transposed
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for j0 in range(0, KH_SPLIT, TILE):
        j_ok = j0 + offs_j < KH
        g = 2 * (j_begin + j0) // GROUP_SIZE
        # A split's tiles past K (3 splits of a 64-column K) would read a group past the last: masked, the
        # scale is 0 and the tile adds nothing (an unmasked read could meet a NaN there: 0 * NaN)
        g_ok = tl.where(g < NUM_GROUPS, n_ok, False)  # a scalar and a tensor mask: the interpreter needs where
        z = tl.load(z_ptr + offs_n * stride_zn + g * stride_zg, mask=g_ok, other=0)
        s = tl.load(s_ptr + offs_n * stride_sn + g * stride_sg, mask=g_ok, other=0.0).to(tl.float32)
        if SWAP_AB:
            x_low = tl.load(x_ptrs, mask=j_ok[:, None] & m_ok[None, :], other=0.0)
            x_high = tl.load(x_ptrs + KH, mask=j_ok[:, None] & m_ok[None, :], other=0.0)
            packed = tl.load(q_ptrs, mask=n_ok[:, None] & j_ok[None, :], other=0)
            if SCALE_WEIGHTS:
                # the weights as the reference dequantizes them, (q - z) * s rounded to x's dtype: one
                # accumulator, where a partial product per tile costs registers that large tiles lack
                zf = _offset_nibbles(z, tl.float32)[:, None]
                lo = ((_offset_nibbles(packed & 0xF, tl.float32) - zf) * s[:, None]).to(x_low.dtype)
                hi = ((_offset_nibbles(packed >> 4, tl.float32) - zf) * s[:, None]).to(x_low.dtype)
                acc_t = tl.dot(lo, x_low, acc_t, input_precision=DOT_PRECISION)
                acc_t = tl.dot(hi, x_high, acc_t, input_precision=DOT_PRECISION)
            else:
                zb = _offset_nibbles(z, x_low.dtype)[:, None]
                lo = _offset_nibbles(packed & 0xF, x_low.dtype) - zb
                hi = _offset_nibbles(packed >> 4, x_low.dtype) - zb
                part = tl.dot(lo, x_low, input_precision=DOT_PRECISION)
                part = tl.dot(hi, x_high, part, input_precision=DOT_PRECISION)
                acc_t += part * s[:, None]
        else:
            x_low = tl.load(x_ptrs, mask=m_ok[:, None] & j_ok[None, :], other=0.0)
            x_high = tl.load(x_ptrs + KH, mask=m_ok[:, None] & j_ok[None, :], other=0.0)
            packed = tl.load(q_ptrs, mask=j_ok[:, None] & n_ok[None, :], other=0)
            # (2^e + q) - (2^e + z) = q - z, exactly
            zb = _offset_nibbles(z, x_low.dtype)[None, :]
            lo = _offset_nibbles(packed & 0xF, x_low.dtype) - zb
            hi = _offset_nibbles(packed >> 4, x_low.dtype) - zb
            part = tl.dot(x_low, lo, input_precision=DOT_PRECISION)
            part = tl.dot(x_high, hi, part, input_precision=DOT_PRECISION)
            acc += part * s[None, :]
        x_ptrs += BLOCK_K // 2
        q_ptrs += BLOCK_K // 2
    if SWAP_AB:
        acc = tl.trans(acc_t)
    y_ptr += tl.program_id(2) * M * N
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    # A K tile must stay inside one group; row tiles taller than the bucket only waste work.
    return [c for c in configs if named_args["GROUP_SIZE"] % c.kwargs["BLOCK_K"] == 0
            and c.kwargs["BLOCK_M"] <= max(16, named_args["M_BUCKET"])]


@functools.cache
def _autotuned() -> triton.runtime.Autotuner:
    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
               for bm, bn, bk, w, s in CONFIGS]
    configs += [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SWAP_AB": True, "SCALE_WEIGHTS": scaled},
                              num_warps=w, num_stages=s) for bm, bn, bk, w, s, scaled in SWAPPED_CONFIGS]
    return triton.autotune(configs=configs, key=["M_BUCKET", "N", "K", "GROUP_SIZE"],
                           prune_configs_by={"early_config_prune": _prune})(_w4a16_kernel)


def w4a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int, split_k: int | None = None, blocks: dict | None = None) -> torch.Tensor:
    """x: [M, K] float16/bfloat16/float32, qweight: uint8 [N, ceil(K/2)], scales: [N, G] float,
    zeros: uint8 [N, G] (0..15), G = ceil(K / group_size) -> x @ w.T: [M, N] in x.dtype. split_k: K ranges
    summed after the kernel (None: chosen from the shape for decode, else 1). blocks: one launch
    ({"BLOCK_M", "BLOCK_N", "BLOCK_K"}, optionally "SWAP_AB", "SCALE_WEIGHTS", "num_warps", "num_stages";
    BLOCK_K dividing group_size) instead of the autotuned or fixed ones."""
    check_int4_operands(x, qweight, scales, zeros, group_size)
    if split_k is not None and (isinstance(split_k, bool) or not isinstance(split_k, int) or split_k < 1):
        raise ValueError(f"split_k: must be a positive int, got {split_k!r}")
    m, k = x.shape
    n = qweight.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    kh = qweight.shape[1]
    if has_kernel_order(k):
        # x: [M, K] -> [M, 2, KH]: the columns of the bytes' low nibbles (x_split[:, 0]), then those of the
        # high ones. In KERNEL_ORDER byte b of a word holds columns (0, 2), (4, 6), (1, 3), (5, 7): column
        # 4 * c2 + 2 * half + c0 is byte 2 * c0 + c2's nibble `half`. A view and one copy, no index tensor
        # (its host-to-device copy would break CUDA graph capture).
        x_split = x.reshape(m, k // 8, 2, 2, 2).permute(0, 3, 1, 4, 2).reshape(m, 2, kh)
    else:
        if k % 2:
            x = F.pad(x, (0, 1))  # the zero column meets the padding nibble
        # x: [M, 2 * KH] -> [M, 2, KH]: row m holds x[m, 0::2], then x[m, 1::2]
        x_split = x.reshape(m, kh, 2).transpose(1, 2).contiguous()
    # fp32 without TF32, as torch's default: the result then matches a float32 reference closely.
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    fixed, launch = None, {}
    if blocks is not None:
        if group_size % blocks["BLOCK_K"]:
            raise ValueError(f"blocks: BLOCK_K={blocks['BLOCK_K']} must divide group_size={group_size}")
        launch = {key: blocks[key] for key in ("num_warps", "num_stages") if key in blocks}
        fixed = {key: value for key, value in blocks.items() if key not in launch}
    elif interpreting():
        fixed = INTERPRET_BLOCKS
    elif x.dtype == torch.float32:
        # float32 serves checks and the builder's scoring, not production: one fixed tile instead of
        # autotuning (13 compiles) for every new row bucket the scoring's varied lengths hit.
        fixed, launch = FLOAT32_BLOCKS, {"num_warps": 4, "num_stages": 3}
    elif m <= DECODE_MAX_M and split_k != 1:
        blocks = {**DECODE_BLOCKS, "BLOCK_K": min(DECODE_BLOCKS["BLOCK_K"], group_size & -group_size)}
        if split_k is None:
            split_k = split_k_for(triton.cdiv(n, blocks["BLOCK_N"]), triton.cdiv(k, blocks["BLOCK_K"]), x.device)
        if split_k > 1:  # else the autotuned tiles, which beat this one's on unsplit shapes
            fixed, launch = blocks, DECODE_LAUNCH
    split_k = (split_k or 1) if fixed is not None else 1  # the autotuned tiles never split
    out = y if split_k == 1 else torch.empty((split_k, m, n), dtype=torch.float32, device=x.device)
    # y is contiguous, so its row stride is n, as is the partials buffer's.
    args = (x_split, qweight, scales, zeros, out, m, n, m_bucket(m), x_split.stride(0), qweight.stride(0),
            scales.stride(0), scales.stride(1), zeros.stride(0), zeros.stride(1), n, k, group_size, precision)
    if fixed is None:
        _autotuned()[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))](*args)
    else:
        grid = (triton.cdiv(m, fixed["BLOCK_M"]), triton.cdiv(n, fixed["BLOCK_N"]), split_k)
        _w4a16_kernel[grid](*args, **fixed, SPLIT_K=split_k, **launch)
    return y if split_k == 1 else reduce_splits(out, x.dtype)
