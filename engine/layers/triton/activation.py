"""SiLU-and-mul for the gated MLP: gate_up = [gate, up] (the fused gate/up projection's output) ->
silu(gate) * up.

Rounded as the unfused torch code `F.silu(gate) * up` rounds in a half dtype: silu is computed in
float32 and rounded to the dtype, then the product is computed in float32 and rounded again. Each
program covers a BLOCK-wide column strip of one row, so the grid is independent of the hidden size.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.layers.triton import FLOAT_DTYPES, check_last_dim_contiguous, check_tensor, interpreting
from engine.layers.triton.pdl import pdl_launch, wait_for_previous

BLOCK = 1024
INTERPRET_BLOCK = 64  # small strips exercise the edge mask on test-sized rows


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_out, I, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    # x: [tokens, 2 * I] (gate, then up); out: [tokens, I]
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < I
    wait_for_previous(USE_PDL)
    gate = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + I + cols, mask=ok, other=0.0).to(tl.float32)
    silu = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty)
    out = silu.to(tl.float32) * up
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=ok)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [tokens, 2 * I] (rows may be strided) -> silu(gate_up[:, :I]) * gate_up[:, I:]: a new
    [tokens, I] tensor in gate_up's dtype."""
    check_tensor("gate_up", gate_up, FLOAT_DTYPES, 2)
    check_last_dim_contiguous("gate_up", gate_up)
    tokens, width = gate_up.shape
    if width % 2:
        raise ValueError(f"gate_up: last dim must be even ([gate, up]), got {width}")
    inter = width // 2
    out = torch.empty((tokens, inter), dtype=gate_up.dtype, device=gate_up.device)
    if out.numel() == 0:
        return out
    block = INTERPRET_BLOCK if interpreting() else BLOCK
    _silu_and_mul_kernel[(tokens, triton.cdiv(inter, block))](gate_up, out, gate_up.stride(0), out.stride(0),
                                                              inter, BLOCK=block, num_warps=4,
                                                              **pdl_launch(gate_up.device))
    return out
