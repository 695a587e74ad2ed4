"""Per-token FP8 (e4m3) activation quantization in one kernel: scale = amax(|x[m]|) / 448, xq = x / scale.

fp8.py's eager version is ~8 kernels (abs, amax, float, divide, clamp, cast, each a pass over the
activations) before every fp8 linear; this is one launch that reads each row twice (the second pass
hits L2) and writes the e4m3 row and its scale. Exactly the eager result on CUDA: the amax is taken
in float32 from the same values, and the division is IEEE round-to-nearest (div_rn), as torch's.
`fp8_scale` and `fp8_codes` are those numerics for kernels that quantize a row they produced themselves
(RMSNorm, SiLU-and-mul: engine/layers/triton/), so their fp8 output has this kernel's bits.

`fp8_quantize_static` takes a scale instead (a layer's calibrated input scale: fp8.py): one pass, x / scale
clamped to +-448, as fp8.quantize_static computes it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.layers.quantization.triton import check_activations
from engine.layers.triton.pdl import pdl_launch, wait_for_previous

BLOCK_K = 1024


@triton.jit
def fp8_scale(amax):
    """A row's scale from its float32 amax, as fp8.quantize_per_token computes it: amax.clamp(min=1e-12) / 448."""
    return tl.math.div_rn(tl.maximum(amax, 1e-12), 448.0)


@triton.jit
def fp8_codes(x, scale):
    """float32 values -> their e4m3 codes under `scale`: x / scale (IEEE division, as torch's), clamped to
    +-448."""
    return tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -448.0), 448.0).to(tl.float8e4nv)


@triton.jit
def _fp8_quant_kernel(x_ptr, q_ptr, s_ptr, stride_xm, stride_qm, K: tl.constexpr, BLOCK_K: tl.constexpr,
                      USE_PDL: tl.constexpr):
    row = tl.program_id(0)
    wait_for_previous(USE_PDL)
    offs = tl.arange(0, BLOCK_K)
    x_row = x_ptr + row * stride_xm
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = fp8_scale(tl.max(amax, axis=0))
    for k0 in range(0, K, BLOCK_K):
        k_ok = k0 + offs < K
        x = tl.load(x_row + k0 + offs, mask=k_ok, other=0.0).to(tl.float32)
        tl.store(q_ptr + row * stride_qm + k0 + offs, fp8_codes(x, scale), mask=k_ok)
    tl.store(s_ptr + row, scale)


@triton.jit
def _fp8_quant_static_kernel(x_ptr, q_ptr, s_ptr, stride_xm, stride_qm, K, BLOCK_K: tl.constexpr,
                             USE_PDL: tl.constexpr):
    # One program per BLOCK_K columns of a row: with the scale given, no row-wide amax to wait for.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    scale = tl.load(s_ptr)  # a constant of the layer: read before the wait (pdl.py)
    wait_for_previous(USE_PDL)
    ok = cols < K
    x = tl.load(x_ptr + row * stride_xm + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(q_ptr + row * stride_qm + cols, fp8_codes(x, scale), mask=ok)


def check_static_scale(scale: torch.Tensor, like: torch.Tensor) -> None:
    """A calibrated input scale as the kernels take it: float32, one element, on the activations' device."""
    if not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32 or scale.numel() != 1:
        raise ValueError(f"static_scale: must be a float32 tensor of one element, got "
                         f"{scale.dtype if isinstance(scale, torch.Tensor) else type(scale).__name__} "
                         f"{tuple(getattr(scale, 'shape', ()))}")
    if scale.device != like.device:
        raise ValueError(f"static_scale: on {scale.device}, the activations on {like.device}")


def fp8_quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [M, K] float16/bfloat16/float32 on CUDA (or under TRITON_INTERPRET=1) -> (float8_e4m3fn
    [M, K], float32 scales [M, 1]) with x ~ xq * scales."""
    check_activations(x)
    x, xq = _operands(x)
    m, k = x.shape
    scales = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m:
        block = max(16, min(BLOCK_K, triton.next_power_of_2(k)))
        _fp8_quant_kernel[(m,)](x, xq, scales, x.stride(0), xq.stride(0), k, block, num_warps=4, **pdl_launch(x.device))
    return xq, scales


def fp8_quantize_static(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x: [M, K] float16/bfloat16/float32, scale: float32 of one element on x's device -> float8_e4m3fn
    [M, K]: x / scale clamped to +-448 (x ~ xq * scale)."""
    check_activations(x)
    check_static_scale(scale, x)
    x, xq = _operands(x)
    m, k = x.shape
    if m and k:
        block = max(16, min(BLOCK_K, triton.next_power_of_2(k)))
        _fp8_quant_static_kernel[(m, triton.cdiv(k, block))](x, xq, scale, x.stride(0), xq.stride(0), k, block,
                                                            num_warps=4, **pdl_launch(x.device))
    return xq


def _operands(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x with unit column stride, and the e4m3 tensor to write."""
    x = x if x.stride(1) == 1 else x.contiguous()
    return x, torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
