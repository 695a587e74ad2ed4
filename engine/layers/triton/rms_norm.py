"""RMSNorm, plain and fused with the residual add, one program per row.

The numerics follow HF Llama's RMSNorm (engine.layers.norm) step for step, because the engine is
checked token for token against HF: the residual sum is rounded to the activation dtype (as torch's
`x + residual` is), the mean of squares and the normalisation run in float32, the normalised row is
rounded to the dtype, and only then multiplied by the weight (in float32, rounded once, as torch
multiplies two half tensors). 1 / sqrt is computed correctly rounded (sqrt_rn, div_rn) rather than with
the approximate rsqrt, so the only difference left is the summation order of the mean.

A whole row (hidden <= 8192) fits one program's registers, so the row is read once and the reduction
needs no second pass or atomics. That also lets the kernel quantize its output per token for an fp8
linear layer (`rms_norm_fp8`, `fused_add_rms_norm_fp8`): the bits of the plain kernel followed by
fp8_quantize_per_token, without writing and reading the row in between; or, given the layer's static
input scale, by fp8_quantize_static.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.layers.quantization.triton.fp8_quant import check_static_scale, fp8_codes, fp8_scale
from engine.layers.triton import FLOAT_DTYPES, check_last_dim_contiguous, check_shape, check_tensor, next_power_of_2
from engine.layers.triton.pdl import pdl_launch, wait_for_previous

MAX_HIDDEN = 8192  # one row per program: wider rows would spill registers


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, scale_ptr, stride_x, stride_res, stride_out, N, eps,
                     HAS_RESIDUAL: tl.constexpr, FP8_OUT: tl.constexpr, STATIC_SCALE: tl.constexpr,
                     BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    # x, res, out: [rows, N] with row strides; w: [N]. With HAS_RESIDUAL, res is read and overwritten
    # with x + res (the next layer's residual). FP8_OUT: out is e4m3 and scale_ptr [rows] gets each
    # row's scale, or with STATIC_SCALE holds the one scale to quantize with.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < N
    dtype = x_ptr.dtype.element_ty
    w = tl.load(w_ptr + cols, mask=ok, other=0.0)  # a weight: read before the wait (pdl.py)
    wait_for_previous(USE_PDL)
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        res_ptrs = res_ptr + row * stride_res + cols
        r = tl.load(res_ptrs, mask=ok, other=0.0)
        # Rounded to the dtype before the norm reads it, as the unfused model's `x + residual` is.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(dtype)
        tl.store(res_ptrs, x, mask=ok)
    x32 = x.to(tl.float32)
    var = tl.sum(x32 * x32, axis=0) / N
    rstd = tl.div_rn(1.0, tl.sqrt_rn(var + eps))
    y = (x32 * rstd).to(dtype)
    out = (w.to(tl.float32) * y.to(tl.float32)).to(dtype)
    if FP8_OUT:
        out = out.to(tl.float32)
        if STATIC_SCALE:
            scale = tl.load(scale_ptr)
        else:  # masked columns hold 0: they leave the amax alone
            scale = fp8_scale(tl.max(tl.abs(out), axis=0))
            tl.store(scale_ptr + row, scale)
        tl.store(out_ptr + row * stride_out + cols, fp8_codes(out, scale), mask=ok)
    else:
        tl.store(out_ptr + row * stride_out + cols, out, mask=ok)


def _check(x: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    check_tensor("x", x, FLOAT_DTYPES, 2)
    check_last_dim_contiguous("x", x)
    check_tensor("weight", weight, (x.dtype,), 1, like=x)
    check_shape("weight", weight, (x.shape[1],), "x's hidden size")
    check_last_dim_contiguous("weight", weight)
    if x.shape[1] > MAX_HIDDEN:
        raise ValueError(f"x: hidden size {x.shape[1]} is over the {MAX_HIDDEN} one program can hold")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps: must be a non-negative float, got {eps!r}")


def _launch(x: torch.Tensor, res: torch.Tensor | None, weight: torch.Tensor, out: torch.Tensor,
            scales: torch.Tensor | None, eps: float, static: bool = False) -> None:
    rows, hidden = x.shape
    if rows == 0 or hidden == 0:
        return
    block = next_power_of_2(hidden)
    # About 8 elements per thread: 576 (SmolLM2) -> 2 warps, 4096 (7B) -> 8 warps.
    num_warps = min(max(block // 256, 1), 8)
    _rms_norm_kernel[(rows,)](x, res if res is not None else x, weight, out, scales if scales is not None else out,
                              x.stride(0), res.stride(0) if res is not None else 0, out.stride(0), hidden, float(eps),
                              HAS_RESIDUAL=res is not None, FP8_OUT=scales is not None, STATIC_SCALE=static,
                              BLOCK=block, num_warps=num_warps, **pdl_launch(x.device))


def _check_residual(x: torch.Tensor, residual: torch.Tensor) -> None:
    check_tensor("residual", residual, (x.dtype,), 2, like=x)
    check_shape("residual", residual, tuple(x.shape), "x's shape")
    check_last_dim_contiguous("residual", residual)


def _fp8_out(x: torch.Tensor, static_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The e4m3 output and its scales: a new one per row, or the static scale given (checked)."""
    if static_scale is not None:
        check_static_scale(static_scale, x)
        return torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device), static_scale
    return (torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device),
            torch.empty((x.shape[0], 1), dtype=torch.float32, device=x.device))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [tokens, hidden] (rows may be strided), weight: [hidden] in x's dtype
    -> weight * (x * rsqrt(mean(x^2) + eps)): a new [tokens, hidden] tensor in x's dtype."""
    _check(x, weight, eps)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(x, None, weight, out, None, eps)
    return out


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual: [tokens, hidden] -> (rms_norm(x + residual), x + residual).

    `residual` is updated in place with x + residual (rounded to the dtype) and is the second value
    returned; the first is a new tensor. x may be the same tensor as residual."""
    _check(x, weight, eps)
    _check_residual(x, residual)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(x, residual, weight, out, None, eps)
    return out, residual


def rms_norm_fp8(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 static_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """rms_norm(x, weight, eps) quantized per token: (float8_e4m3fn [tokens, hidden], float32 scales
    [tokens, 1]), the bits of fp8_quantize_per_token(rms_norm(...)); with `static_scale` (float32, one
    element): (fp8_quantize_static(rms_norm(...), static_scale), static_scale)."""
    _check(x, weight, eps)
    out, scales = _fp8_out(x, static_scale)
    _launch(x, None, weight, out, scales, eps, static=static_scale is not None)
    return out, scales


def fused_add_rms_norm_fp8(
        x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
        static_scale: torch.Tensor | None = None) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """fused_add_rms_norm with its first value quantized as rms_norm_fp8's (per token, or by `static_scale`)."""
    _check(x, weight, eps)
    _check_residual(x, residual)
    out, scales = _fp8_out(x, static_scale)
    _launch(x, residual, weight, out, scales, eps, static=static_scale is not None)
    return (out, scales), residual
