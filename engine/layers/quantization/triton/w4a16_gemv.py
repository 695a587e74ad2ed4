"""W4A16 GEMV for decode (M <= GEMV_MAX_M): y = x @ w.T, w[n, k] = (q[n, k] - z[n, g]) * s[n, g], in
the int4 format of engine.layers.quantization.int4 with each 32-bit word's nibbles in its KERNEL_ORDER,
without tensor cores.

Each program owns BLOCK_N whole weight rows and reads them once, BLOCK_W int32 words (8 columns each)
per row per step. At batch 1 an int4 GEMV is bound by the instructions that unpack and multiply, not by
memory, so bfloat16 activations take a packed path (PAIRED): one and-or lifts two nibbles (positions p and
p + 4, the word's adjacent columns 2p and 2p + 1 in KERNEL_ORDER) into the mantissas of a bf16 pair
128 + q, a bf16x2 FMA takes off 128 + z exactly, and four more multiply the word's four pairs by x's column
pairs, read as int32 words: 19 instructions per 8 weights, where the float32 path below spends 24 plus a
16-bit load and conversion of x per column (H100, 7B shapes, bench/gemv_ab.py: qkv 15.3 -> 12.7 us, down
16.0 -> 11.2, lm_head 121.1 -> 98.0). Its products round to bf16 (relative error ~2^-9 each, summed four
at a time before float32 takes over), well inside int4's own error; each row's sums are scaled per word
and reduced once, after the loop. Other activation dtypes (and
Triton's interpreter, which runs no PTX) take the float32 path: each nibble shifted into the mantissa of
128.0, giving the float 128 + q with no conversion, with the 128 and the zero point taken off once per
group: sum((q - z) * x) * s = (sum((128 + q) * x) - (128 + z) * sum(x)) * s.

An N of too few row tiles (a 7B o_proj or down_proj: 4096 rows, 64 tiles on 132 SMs) splits K over
SPLIT_K programs per row tile, rather than leaving most SMs idle (0.7 TB/s unsplit) or taking the tensor-core
GEMM's split-K, whose partial sums cost two more launches. Here the last program of a row tile to
finish sums the partials (a counter per tile, which that program resets), in split order: one launch,
and the same result every run.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.layers.quantization.triton import check_int4_operands, interpreting, multiprocessors
from engine.layers.triton.activation import check_gated, gated_rows, output_tiles
from engine.layers.triton.pdl import pdl_launch, wait_for_previous
from engine.layers.triton.split_k import PROGRAMS_PER_SM, check_split, split_buffers, split_for, store_or_reduce

GEMV_MAX_M = 4
# Launches by N, from bench/quant_gemm_sweep.py --gemv and bench/gemv_ab.py --sweep on an H100 (7B
# shapes, group 128; BLOCK_W in int32 words of 8 columns; NUM_STAGES > 1 pipelines the weight loads
# through shared memory); a GPU that the row tiles alone do not fill gets K split (split_for). The float32
# path: 64x64 where 64-row tiles fill it (lm_head: 119 us), 128x32 for qkv / gate_up (15.3 / 28.0 us,
# against 18.7 / 28.0 for 64x64), 64x32 for a 4096-row o_proj / down (7.7 / 16.2 us). The paired path:
# 64x64 in 2 stages (lm_head 96.6 us, 97.9 in one), 32x32 in 3 stages above PAIRED_SHORT_N rows (gate_up
# 21.4 us, 22.5 in one), 64x16 up to it (qkv 11.5 us against 12.7 for 32x32, o_proj / down 6.1-6.4 / 11.1).
WIDE_LAUNCH = {"BLOCK_N": 64, "BLOCK_W": 64, "num_warps": 4}
MID_LAUNCH = {"BLOCK_N": 128, "BLOCK_W": 32, "num_warps": 4}
SHORT_LAUNCH = {"BLOCK_N": 64, "BLOCK_W": 32, "num_warps": 4}
PAIRED_WIDE_LAUNCH = {"BLOCK_N": 64, "BLOCK_W": 64, "num_warps": 4, "NUM_STAGES": 2}
PAIRED_MID_LAUNCH = {"BLOCK_N": 32, "BLOCK_W": 32, "num_warps": 4, "NUM_STAGES": 3}
PAIRED_SHORT_LAUNCH = {"BLOCK_N": 64, "BLOCK_W": 16, "num_warps": 4}
SHORT_N = 8192
PAIRED_SHORT_N = 16384
INTERPRET_BLOCKS = {"BLOCK_N": 16, "BLOCK_W": 4}  # small tiles exercise the edge masks


def gemv_supports(k: int) -> bool:
    """Rows of whole int32 words: K a multiple of 8 (every real model's hidden and MLP sizes)."""
    return k % 8 == 0


def prefers_gemv(m: int, k: int) -> bool:
    """Whether decode takes the GEMV over the tensor-core GEMM (w4a16.py): every decode size it takes."""
    return 1 <= m <= GEMV_MAX_M and gemv_supports(k)


def tile_fits(block_w: int, group_size: int) -> bool:
    """A tile of block_w words must hold whole groups or lie inside one."""
    return (8 * block_w) % group_size == 0 or (group_size // 8) % block_w == 0


def takes_pairs(x: torch.Tensor) -> bool:
    """Whether x takes the packed bf16x2 path (PTX: CUDA only, not the interpreter)."""
    return x.dtype == torch.bfloat16 and not interpreting()


def launch_for(n: int, group_size: int, device: torch.device, paired: bool = False) -> dict[str, int]:
    if interpreting():
        launch = dict(INTERPRET_BLOCKS)
    elif triton.cdiv(n, WIDE_LAUNCH["BLOCK_N"]) >= PROGRAMS_PER_SM * multiprocessors(device):
        launch = dict(PAIRED_WIDE_LAUNCH if paired else WIDE_LAUNCH)
    elif paired:
        launch = dict(PAIRED_MID_LAUNCH if n > PAIRED_SHORT_N else PAIRED_SHORT_LAUNCH)
    else:
        launch = dict(MID_LAUNCH if n > SHORT_N else SHORT_LAUNCH)
    if not tile_fits(launch["BLOCK_W"], group_size):
        # An unusual group size (96: 12 words): the largest power of two that divides its words.
        words = group_size // 8
        launch["BLOCK_W"] = words & -words
    return launch


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


# Products of one word: nibble pairs (positions p, p + 4) as bf16x2 128 + q; an FMA with 1.0 and
# -(128 + z) ($2) leaves q - z exactly; four FMAs with x's column pairs ($3..$6) sum the products per lane;
# the two lanes' sums, widened to float32 (a bf16 is the top half of its float32), are added: $0. FMAs
# only (sm_80+), no bf16x2 add or mul (sm_90+); the sum starts from -0.0, which adds nothing.
_PAIR_PRODUCTS_PTX: tl.constexpr = tl.constexpr("""
{
.reg .b32 t0, t1, t2, t3, w, one, acc;
mov.b32 one, 0x3F803F80;
mov.b32 acc, 0x80008000;
lop3.b32 t0, $1, 0x000F000F, 0x43004300, 0xea;
shr.u32 w, $1, 4;
lop3.b32 t1, w, 0x000F000F, 0x43004300, 0xea;
shr.u32 w, $1, 8;
lop3.b32 t2, w, 0x000F000F, 0x43004300, 0xea;
shr.u32 w, $1, 12;
lop3.b32 t3, w, 0x000F000F, 0x43004300, 0xea;
fma.rn.bf16x2 t0, t0, one, $2;
fma.rn.bf16x2 t1, t1, one, $2;
fma.rn.bf16x2 t2, t2, one, $2;
fma.rn.bf16x2 t3, t3, one, $2;
fma.rn.bf16x2 acc, t0, $3, acc;
fma.rn.bf16x2 acc, t1, $4, acc;
fma.rn.bf16x2 acc, t2, $5, acc;
fma.rn.bf16x2 acc, t3, $6, acc;
shl.b32 t0, acc, 16;
and.b32 t1, acc, 0xffff0000;
add.f32 $0, t0, t1;
}
""")


@triton.jit
def _pair_products(words, neg_zeros, x01, x23, x45, x67):
    """words: int32 in KERNEL_ORDER, neg_zeros: -(128 + z) as an int32 bf16 pair, x01..x67: x's column
    pairs of each word as int32 bf16 pairs -> sum over the word of (q - z) * x, float32."""
    return tl.inline_asm_elementwise(_PAIR_PRODUCTS_PTX, "=r,r,r,r,r,r,r", [words, neg_zeros, x01, x23, x45, x67],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _w4a16_gemv_kernel(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, part_ptr, count_ptr, M, N,
                       stride_xm, stride_qn, stride_sn, stride_sg, stride_zn, stride_zg, stride_ym,
                       K: tl.constexpr, GROUP_SIZE: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, SPLIT_K: tl.constexpr, GATED: tl.constexpr,
                       USE_PDL: tl.constexpr, PAIRED: tl.constexpr, NUM_STAGES: tl.constexpr = 1):
    # q is read as int32 words, 8 columns each: nibble i of word j (bits 4i) is column
    # 8j + KERNEL_ORDER[i] = 8j + 2 * (i % 4) + i // 4. A tile of BLOCK_W words holds whole
    # groups (GROUPS of them) or lies inside one (GROUPS = 1): the wrapper picks BLOCK_W so. K and
    # GROUP_SIZE are compile-time constants (a model has only a few).
    KW: tl.constexpr = K // 8  # words per weight row (the wrapper requires K % 8 == 0)
    GROUPS: tl.constexpr = (8 * BLOCK_W + GROUP_SIZE - 1) // GROUP_SIZE  # 1 inside a group
    NUM_GROUPS: tl.constexpr = (K + GROUP_SIZE - 1) // GROUP_SIZE
    WORDS_PER_GROUP: tl.constexpr = BLOCK_W // GROUPS
    TILES_PER_SPLIT: tl.constexpr = ((KW + BLOCK_W - 1) // BLOCK_W + SPLIT_K - 1) // SPLIT_K
    w_begin = tl.program_id(1) * (TILES_PER_SPLIT * BLOCK_W)
    offs_n, n_ok = gated_rows(N, BLOCK_N, GATED)  # GATED: y is silu(gate) * up (engine/layers/triton/activation.py)
    offs_w = tl.arange(0, BLOCK_W)
    offs_g = tl.arange(0, GROUPS)
    offs_m = tl.arange(0, BLOCK_M)
    q_rows = q_ptr + offs_n[:, None].to(tl.int64) * stride_qn  # [BLOCK_N, 1]
    wait_for_previous(USE_PDL)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_words = tl.zeros((BLOCK_N, BLOCK_W), dtype=tl.float32)  # PAIRED at M = 1: scaled sums per word
    for t in tl.range(TILES_PER_SPLIT, num_stages=NUM_STAGES):  # a split's tiles past K are masked
        w0 = w_begin + t * BLOCK_W
        w_ok = w0 + offs_w < KW
        words = tl.load(q_rows + (w0 + offs_w)[None, :], mask=n_ok[:, None] & w_ok[None, :], other=0)
        g = 8 * w0 // GROUP_SIZE + offs_g  # [GROUPS]
        gn_ok = n_ok[:, None] & (g < NUM_GROUPS)[None, :]
        s = tl.load(s_ptr + offs_n[:, None] * stride_sn + g[None, :] * stride_sg, mask=gn_ok, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + offs_n[:, None] * stride_zn + g[None, :] * stride_zg, mask=gn_ok, other=0)
        if PAIRED:
            neg_z = z.to(tl.int32) | 0xC300  # bf16 -(128 + z)
            neg_z = neg_z | (neg_z << 16)
            if GROUPS == 1:
                neg_z_words, s_words = neg_z, s
            else:  # [BLOCK_N, GROUPS] -> per word
                neg_z_words = tl.reshape(tl.broadcast_to(neg_z[:, :, None], (BLOCK_N, GROUPS, WORDS_PER_GROUP)),
                                         (BLOCK_N, BLOCK_W))
                s_words = tl.reshape(tl.broadcast_to(s[:, :, None], (BLOCK_N, GROUPS, WORDS_PER_GROUP)),
                                     (BLOCK_N, BLOCK_W))
        else:
            # sum((128 + q - 128 - z) * x) = sum((128 + q) * x) - (128 + z) * sum(x)
            z = z.to(tl.float32) + 128.0
        cols = 8 * (w0 + offs_w)  # [BLOCK_W], the first column of each word
        for m in tl.static_range(BLOCK_M):
            x_ok = w_ok & (offs_w * 0 + m < M)  # vectors: the interpreter takes no scalar mask
            if PAIRED:
                # x's bf16 column pairs (8j + 2p, 8j + 2p + 1) as int32 words: the wrapper keeps x 4-byte aligned
                x_pairs = x_ptr.to(tl.pointer_type(tl.int32)) + m * (stride_xm // 2) + 4 * (w0 + offs_w)
                x01 = tl.load(x_pairs, mask=x_ok, other=0)
                x23 = tl.load(x_pairs + 1, mask=x_ok, other=0)
                x45 = tl.load(x_pairs + 2, mask=x_ok, other=0)
                x67 = tl.load(x_pairs + 3, mask=x_ok, other=0)
                prod = _pair_products(words, neg_z_words, x01[None, :], x23[None, :], x45[None, :], x67[None, :])
                if BLOCK_M == 1:
                    acc_words += prod * s_words
                else:
                    part = tl.sum(prod * s_words, axis=1)
            else:
                x_row = x_ptr + m * stride_xm + cols
                prod = tl.zeros((BLOCK_N, BLOCK_W), dtype=tl.float32)
                xsum = tl.zeros((BLOCK_W,), dtype=tl.float32)
                for i in tl.static_range(8):
                    x_i = tl.load(x_row + (2 * (i % 4) + i // 4), mask=x_ok, other=0.0).to(tl.float32)
                    prod += _biased_nibble(words, i) * x_i[None, :]
                    xsum += x_i
                if GROUPS == 1:
                    part = tl.sum(s, axis=1) * (tl.sum(prod, axis=1) - tl.sum(z, axis=1) * tl.sum(xsum, axis=0))
                else:
                    per_group = tl.sum(tl.reshape(prod, (BLOCK_N, GROUPS, WORDS_PER_GROUP)), axis=2)
                    xsum_group = tl.sum(tl.reshape(xsum, (GROUPS, WORDS_PER_GROUP)), axis=1)
                    part = tl.sum(s * (per_group - z * xsum_group[None, :]), axis=1)  # [BLOCK_N]
            if BLOCK_M == 1:
                if not PAIRED:
                    acc += part[None, :]
            else:
                acc = tl.where(offs_m[:, None] == m, acc + part[None, :], acc)
    if PAIRED and BLOCK_M == 1:
        acc = tl.sum(acc_words, axis=1)[None, :]
    store_or_reduce(acc, y_ptr, part_ptr, count_ptr, M, N, stride_ym, offs_m, offs_n,
                    (offs_m < M)[:, None] & n_ok[None, :], SPLIT_K, GATED)

def w4a16_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
               blocks: dict | None = None, gated: bool = False) -> torch.Tensor:
    """x: [M, K] float16/bfloat16/float32 with M <= GEMV_MAX_M and K % 8 == 0, qweight: uint8 [N, K/2]
    contiguous in int4.KERNEL_ORDER (int4.to_kernel_order of the stored rows), scales: [N, G] float,
    zeros: uint8 [N, G], G = ceil(K / group_size) -> x @ w.T: [M, N] in
    x.dtype; gated (rows = [gate; up], N even): silu(gate) * up of it, [M, N / 2], with the bits of
    silu_and_mul after the plain GEMV. blocks: a launch ({"BLOCK_N", "BLOCK_W", "num_warps"}, optionally
    "NUM_STAGES" and "SPLIT_K", else split_for's) instead of launch_for's."""
    check_int4_operands(x, qweight, scales, zeros, group_size)
    m, k = x.shape
    n = qweight.shape[0]
    if not 1 <= m <= GEMV_MAX_M:
        raise ValueError(f"x: the GEMV takes 1..{GEMV_MAX_M} rows, got M={m}")
    if not gemv_supports(k):
        raise ValueError(f"x: the GEMV reads whole int32 words of weights, so K must be a multiple of 8, got K={k}")
    check_gated(gated, n)
    paired = takes_pairs(x)
    if x.stride(1) != 1:
        x = x.contiguous()
    if paired and (x.stride(0) % 2 or x.data_ptr() % 4):
        # The paired path reads x as int32 words. A fresh copy: .contiguous() would keep a contiguous view
        # that starts at an odd element.
        x = x.clone(memory_format=torch.contiguous_format)
    y = torch.empty((m, n // 2 if gated else n), dtype=x.dtype, device=x.device)
    if n == 0:
        return y
    launch = dict(blocks) if blocks is not None else launch_for(n, group_size, x.device, paired)
    if not tile_fits(launch["BLOCK_W"], group_size):
        raise ValueError(f"blocks: BLOCK_W={launch['BLOCK_W']} words neither holds whole groups of "
                         f"{group_size} nor lies inside one")
    n_tiles = output_tiles(n, launch["BLOCK_N"], gated)
    split = check_split(launch.pop("SPLIT_K", None) or split_for(n_tiles, triton.cdiv(k // 8, launch["BLOCK_W"]),
                                                                  x.device), n_tiles)
    part, counters = split_buffers(split, m, n, y)
    words = qweight.view(torch.int32)  # [N, K/8]: rows of K/2 bytes, a multiple of 4
    _w4a16_gemv_kernel[(n_tiles, split)](
        x, words, scales, zeros, y, part, counters, m, n, x.stride(0), words.stride(0), scales.stride(0),
        scales.stride(1), zeros.stride(0), zeros.stride(1), y.stride(0), k, group_size, triton.next_power_of_2(m),
        SPLIT_K=split, GATED=gated, PAIRED=paired, **launch, **pdl_launch(x.device))
    return y
