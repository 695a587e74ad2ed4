"""int4 weights in the register fragments of mma.sync.m16n8k16 (the layout w4a16_mma.cu reads; an
experiment, see probe.py).

mma.sync.m16n8k16 (bf16) multiplies A [16 x 16] by B [16 x 8]; lane L of the warp (g = L // 4, t = L % 4)
holds A's rows g and g + 8 at columns 2t, 2t + 1, 2t + 8 and 2t + 9, in four bf16x2 registers (PTX ISA,
"Matrix fragments for mma.m16n8k16"): (g, 2t | 2t+1), (g+8, 2t | 2t+1), (g, 2t+8 | 2t+9), (g+8, 2t+8 | 2t+9).
With the weight rows (output features) as A's rows, one 32-bit word per lane holds exactly its 8 nibbles
of a 16 x 16 tile, placed so that nibbles p and p + 4 (bits 4p and 16 + 4p) form register p:

    nibble p:   0       1        2         3          4         5          6          7
    row:        g       g + 8    g         g + 8      g         g + 8      g          g + 8
    column:     2t      2t       2t + 8    2t + 8     2t + 1    2t + 1     2t + 9     2t + 9

so `lop3(word >> 4p, 0x000F000F, 0x43004300)` is register p as the bf16 pair 128 + q, as in the Triton
GEMV's paired path. The words are ordered [N / 16, K / 64, 32 lanes, 4]: a lane's four consecutive words
are the four 16-column steps of a 64-column chunk, one 16-byte load.

Scales and zero points: one 32-bit word per (row, group), the bf16 scale in the low half and the bf16
-(128 + zero) in the high half, ordered [N / 16, groups, 8, 2] so that lane g reads rows g and g + 8 of
its tile in one 8-byte load.
"""
from __future__ import annotations

import torch

from engine.layers.quantization.int4 import unpack

TILE_N = 16   # rows of one mma tile (A's rows)
CHUNK_K = 64  # columns a lane's 16-byte load covers: 4 mma steps of 16
_ROWS_PER_STEP = 4096  # rows converted at a time: the unpacked temporaries stay small next to a 7B lm_head


def supports(n: int, k: int, group_size: int) -> bool:
    """Whole tiles and chunks, and chunks that lie inside one group (its scale and zero point)."""
    return n % TILE_N == 0 and k % CHUNK_K == 0 and group_size % CHUNK_K == 0


def _check(n: int, k: int, group_size: int) -> None:
    if not supports(n, k, group_size):
        raise ValueError(f"qweight: the mma layout needs N % {TILE_N} == 0, K % {CHUNK_K} == 0 and "
                         f"group_size % {CHUNK_K} == 0, got N={n}, K={k}, group_size={group_size}")


def to_mma_fragments(packed: torch.Tensor, in_features: int, group_size: int) -> torch.Tensor:
    """Plain packed rows uint8 [N, K / 2] (as stored, int4.pack) -> int32 [N / 16, K / 64, 32, 4]."""
    n, k = packed.shape[0], in_features
    _check(n, k, group_size)
    out = torch.empty((n // TILE_N, k // CHUNK_K, 32, 4), dtype=torch.int32, device=packed.device)
    shifts = torch.arange(8, device=packed.device, dtype=torch.int64) * 4
    for r in range(0, n, _ROWS_PER_STEP):
        q = unpack(packed[r:r + _ROWS_PER_STEP], k).to(torch.int64)
        # row = 16 i + 8 h + g, column = 64 j + 16 s + 8 c8 + 2 t + c1; nibble p = h + 2 c8 + 4 c1
        q = q.view(-1, 2, 8, k // CHUNK_K, 4, 2, 4, 2)                  # [i, h, g, j, s, c8, t, c1]
        q = q.permute(0, 3, 2, 6, 4, 7, 5, 1).reshape(-1, k // CHUNK_K, 32, 4, 8)  # [i, j, g t, s, c1 c8 h]
        words = (q << shifts).sum(dim=-1)
        out[r // TILE_N:(r + q.shape[0] * TILE_N) // TILE_N] = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return out


def from_mma_fragments(words: torch.Tensor, group_size: int) -> torch.Tensor:
    """int32 [N / 16, K / 64, 32, 4] -> the values 0..15 [N, K] (uint8): to_mma_fragments undone."""
    tiles, chunks = words.shape[0], words.shape[1]
    _check(tiles * TILE_N, chunks * CHUNK_K, group_size)
    shifts = torch.arange(8, device=words.device, dtype=torch.int64) * 4
    q = (words.to(torch.int64)[..., None] >> shifts) & 0xF                # [i, j, g t, s, c1 c8 h]
    q = q.view(tiles, chunks, 8, 4, 4, 2, 2, 2)                          # [i, j, g, t, s, c1, c8, h]
    q = q.permute(0, 7, 2, 1, 4, 6, 3, 5)                                 # [i, h, g, j, s, c8, t, c1]
    return q.reshape(tiles * TILE_N, chunks * CHUNK_K).to(torch.uint8)


def scale_zero_words(scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """scales [N, G] (rounded to bf16) and zeros uint8 [N, G] -> int32 [N / 16, G, 8, 2]."""
    n, groups = scales.shape
    if n % TILE_N or tuple(zeros.shape) != (n, groups):
        raise ValueError(f"scales, zeros: expected [N, G] with N % {TILE_N} == 0, got {tuple(scales.shape)}, "
                         f"{tuple(zeros.shape)}")
    s_bits = scales.to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF
    nz_bits = 0xC300 | zeros.to(torch.int32)  # bf16 -(128 + z): the exponent of 128, z in the mantissa
    words = (s_bits | (nz_bits << 16)).to(torch.int64)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words.view(n // TILE_N, 2, 8, groups).permute(0, 3, 2, 1).contiguous()  # [tile, group, g, half]
