"""SiLU-and-mul for the gated MLP: gate_up = [gate, up] (the fused gate/up projection's output) ->
silu(gate) * up.

Rounded as the unfused torch code `F.silu(gate) * up` rounds in a half dtype: silu is computed in
float32 and rounded to the dtype, then the product is computed in float32 and rounded again. Each
program covers a BLOCK-wide column strip of one row, so the grid is independent of the hidden size.

At decode sizes the gate_up projection's GEMV does this itself, as its epilogue (`gated_rows`,
`store_rows`): a program computes the gate and the up rows of the same outputs, so one launch and one
round trip through memory less per layer, with the same bits.

Before an fp8 down projection, `silu_and_mul_fp8` also quantizes each row per token (one program per
row: the scale needs the whole row), with the bits of silu_and_mul then fp8_quantize_per_token; or,
given the layer's static input scale, each strip as fp8_quantize_static would (the plain kernel's grid).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.layers.quantization.triton.fp8_quant import check_static_scale, fp8_codes, fp8_scale
from engine.layers.triton import FLOAT_DTYPES, check_last_dim_contiguous, check_tensor, interpreting
from engine.layers.triton.pdl import pdl_launch, wait_for_previous

BLOCK = 1024
INTERPRET_BLOCK = 64  # small strips exercise the edge mask on test-sized rows


def check_gated(gated: object, n: int) -> None:
    """A gated GEMV's weight rows are [gate; up]: an even count."""
    if not isinstance(gated, bool):
        raise ValueError(f"gated: must be a bool, got {gated!r}")
    if gated and n % 2:
        raise ValueError(f"weight: a gated GEMV's rows are [gate; up], so their count must be even, got {n}")


def output_tiles(n: int, block_n: int, gated: bool) -> int:
    """Programs of a decode GEMV over n weight rows in tiles of block_n (gated: block_n / 2 outputs each)."""
    return triton.cdiv(n // 2, block_n // 2) if gated else triton.cdiv(n, block_n)


@triton.jit
def silu_mul(gate, up, DTYPE: tl.constexpr):
    """silu(gate) * up in float32 from float32 tensors holding DTYPE values, rounded as the unfused torch
    code rounds: silu to DTYPE first (the caller rounds the product)."""
    silu = (gate / (1.0 + tl.exp(-gate))).to(DTYPE)
    return silu.to(tl.float32) * up


@triton.jit
def gated_rows(N, BLOCK_N: tl.constexpr, GATED: tl.constexpr):
    """The weight rows of this program's tile of a decode GEMV over N rows, and which are real: BLOCK_N
    consecutive rows, or (GATED: N rows = [gate; up], N / 2 outputs) the gate rows of BLOCK_N / 2
    consecutive outputs followed by the same outputs' up rows, so the program holds both halves of each."""
    j = tl.arange(0, BLOCK_N)
    if GATED:
        HALF: tl.constexpr = BLOCK_N // 2
        out = tl.program_id(0) * HALF + j % HALF
        return tl.where(j < HALF, out, out + N // 2), out < N // 2
    rows = tl.program_id(0) * BLOCK_N + j
    return rows, rows < N


@triton.jit
def store_rows(y, y_ptr, M, N, stride_ym, offs_m, offs_n, mask, GATED: tl.constexpr):
    """Stores a decode GEMV's y: [BLOCK_M, BLOCK_N] float32 for the weight rows offs_n (from gated_rows):
    as it is, or (GATED) silu(gate) * up into the N / 2 outputs, each half first rounded to y's dtype as
    the GEMV's output would be, so the result has the bits of the GEMV then silu_and_mul."""
    dtype = y_ptr.dtype.element_ty
    if GATED:
        BLOCK_M: tl.constexpr = y.shape[0]
        HALF: tl.constexpr = y.shape[1] // 2
        y = y.to(dtype).to(tl.float32)
        gate, up = tl.split(tl.permute(tl.reshape(y, (BLOCK_M, 2, HALF)), (0, 2, 1)))  # [BLOCK_M, HALF] each
        offs_out = tl.program_id(0) * HALF + tl.arange(0, HALF)
        out_mask = (offs_m < M)[:, None] & (offs_out < N // 2)[None, :]
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_out[None, :], silu_mul(gate, up, dtype).to(dtype),
                 mask=out_mask)
    else:
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], y.to(dtype), mask=mask)


@triton.jit
def _silu_mul_strip(x_row, cols, I, dtype: tl.constexpr):
    """silu(gate) * up of the columns `cols` of one gate_up row (x_row: its start), rounded to dtype and
    held in float32; columns past I hold 0."""
    ok = cols < I
    gate = tl.load(x_row + cols, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(x_row + I + cols, mask=ok, other=0.0).to(tl.float32)
    return silu_mul(gate, up, dtype).to(dtype).to(tl.float32)


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, s_ptr, stride_x, stride_out, I, BLOCK: tl.constexpr,
                         STATIC_FP8: tl.constexpr, USE_PDL: tl.constexpr):
    # x: [tokens, 2 * I] (gate, then up); out: [tokens, I] in x's dtype, or with STATIC_FP8 e4m3 codes
    # under the one scale at s_ptr
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    if STATIC_FP8:
        scale = tl.load(s_ptr)  # a constant of the layer: read before the wait (pdl.py)
    wait_for_previous(USE_PDL)
    out = _silu_mul_strip(x_ptr + row * stride_x, cols, I, x_ptr.dtype.element_ty)
    if STATIC_FP8:
        out = fp8_codes(out, scale)
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=cols < I)


@triton.jit
def _silu_and_mul_fp8_kernel(x_ptr, q_ptr, s_ptr, stride_x, stride_q, I, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    # x: [tokens, 2 * I] (gate, then up); q: [tokens, I] e4m3; s: [tokens] float32. Two passes over the row:
    # its amax, then its codes (the second reads hit L2).
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    dtype = x_ptr.dtype.element_ty
    wait_for_previous(USE_PDL)
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for c0 in range(0, I, BLOCK):
        amax = tl.maximum(amax, tl.abs(_silu_mul_strip(x_row, c0 + tl.arange(0, BLOCK), I, dtype)))
    scale = fp8_scale(tl.max(amax, axis=0))
    for c0 in range(0, I, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        codes = fp8_codes(_silu_mul_strip(x_row, cols, I, dtype), scale)
        tl.store(q_ptr + row * stride_q + cols, codes, mask=cols < I)
    tl.store(s_ptr + row, scale)


def _check_gate_up(gate_up: torch.Tensor) -> int:
    check_tensor("gate_up", gate_up, FLOAT_DTYPES, 2)
    check_last_dim_contiguous("gate_up", gate_up)
    if gate_up.shape[1] % 2:
        raise ValueError(f"gate_up: last dim must be even ([gate, up]), got {gate_up.shape[1]}")
    return gate_up.shape[1] // 2


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [tokens, 2 * I] (rows may be strided) -> silu(gate_up[:, :I]) * gate_up[:, I:]: a new
    [tokens, I] tensor in gate_up's dtype."""
    inter = _check_gate_up(gate_up)
    return _strips(gate_up, torch.empty((gate_up.shape[0], inter), dtype=gate_up.dtype, device=gate_up.device), None)


def _strips(gate_up: torch.Tensor, out: torch.Tensor, static_scale: torch.Tensor | None) -> torch.Tensor:
    if out.numel() == 0:
        return out
    block = INTERPRET_BLOCK if interpreting() else BLOCK
    _silu_and_mul_kernel[(gate_up.shape[0], triton.cdiv(out.shape[1], block))](
        gate_up, out, static_scale if static_scale is not None else out, gate_up.stride(0), out.stride(0), out.shape[1],
        BLOCK=block, STATIC_FP8=static_scale is not None, num_warps=4, **pdl_launch(gate_up.device))
    return out


def silu_and_mul_fp8(gate_up: torch.Tensor,
                     static_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """gate_up: [tokens, 2 * I] (rows may be strided) -> silu_and_mul(gate_up) quantized per token:
    (float8_e4m3fn [tokens, I], float32 scales [tokens, 1]), the bits of fp8_quantize_per_token of it;
    with `static_scale` (float32, one element): (fp8_quantize_static of it, static_scale)."""
    inter = _check_gate_up(gate_up)
    tokens = gate_up.shape[0]
    q = torch.empty((tokens, inter), dtype=torch.float8_e4m3fn, device=gate_up.device)
    if static_scale is not None:  # no row-wide amax: the plain kernel's column strips, storing codes
        check_static_scale(static_scale, gate_up)
        return _strips(gate_up, q, static_scale), static_scale
    scales = torch.empty((tokens, 1), dtype=torch.float32, device=gate_up.device)
    if tokens:
        block = INTERPRET_BLOCK if interpreting() else BLOCK
        _silu_and_mul_fp8_kernel[(tokens,)](gate_up, q, scales, gate_up.stride(0), q.stride(0), inter, BLOCK=block,
                                            num_warps=4, **pdl_launch(gate_up.device))
    return q, scales
