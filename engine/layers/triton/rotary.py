"""Rotary position embedding applied in place to q and k, in HF's rotate-half layout: for each head
x = [x1, x2] (the two halves of head_dim), x <- [x1*c - x2*s, x2*c + x1*s], with c, s the cos and sin
tables (engine.layers.rotary.RotaryEmbedding's buffers) at the token's position.

q and k are usually column slices of one fused qkv projection output, so the kernel writes through
their strides instead of materialising copies. One program rotates every head of q and k for one token:
the token's cos/sin half-rows are then loaded once and shared by all heads. The rotation is computed in
float32 from the float32 tables and rounded to the activation dtype once (RotaryEmbedding.forward
instead rounds cos/sin and each product to the dtype, so half-precision results can differ from it in
the last bit).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.layers.triton import FLOAT_DTYPES, check_last_dim_contiguous, check_tensor, next_power_of_2


@triton.jit
def _cos_sin(cos_ptr, sin_ptr, pos, stride_cos, stride_sin, halves, HALF: tl.constexpr):
    # The tables hold cat(freqs, freqs): their first half is all the rotation needs.
    c = tl.load(cos_ptr + pos * stride_cos + halves, mask=halves < HALF, other=0.0)
    s = tl.load(sin_ptr + pos * stride_sin + halves, mask=halves < HALF, other=0.0)
    return c, s


@triton.jit
def _rotated(x1, x2, c, s):
    # x1, x2: [heads, HALF] float32, the two halves of each head; c, s: [HALF] float32
    # Explicit FMAs: left to itself the compiler fuses whichever product it likes into an FMA, not the same
    # one in every kernel that inlines this, and float32 results then differ by an ulp between kernels.
    c, s = tl.broadcast_to(c[None, :], x1.shape), tl.broadcast_to(s[None, :], x1.shape)
    return tl.fma(x1, c, -(x2 * s)), tl.fma(x2, c, x1 * s)


@triton.jit
def _rotate(x_ptr, stride_t, stride_h, t, c, s, halves, HEADS: tl.constexpr, HALF: tl.constexpr,
            BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    # x: [tokens, HEADS, 2 * HALF] through strides; c, s: [BLOCK_HALF] float32 for token t.
    heads = tl.arange(0, BLOCK_H)
    mask = (heads[:, None] < HEADS) & (halves[None, :] < HALF)
    ptrs = x_ptr + t * stride_t + heads[:, None] * stride_h + halves[None, :]  # [BLOCK_H, BLOCK_HALF]
    x1 = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
    o1, o2 = _rotated(x1, x2, c, s)
    tl.store(ptrs, o1.to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(ptrs + HALF, o2.to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, pos_ptr, cos_ptr, sin_ptr, stride_qt, stride_qh, stride_kt, stride_kh,
                 stride_cos, stride_sin, Q_HEADS: tl.constexpr, K_HEADS: tl.constexpr, HALF: tl.constexpr,
                 BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr, BLOCK_HALF: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t)
    halves = tl.arange(0, BLOCK_HALF)
    c, s = _cos_sin(cos_ptr, sin_ptr, pos, stride_cos, stride_sin, halves, HALF)
    _rotate(q_ptr, stride_qt, stride_qh, t, c, s, halves, Q_HEADS, HALF, BLOCK_QH, BLOCK_HALF)
    _rotate(k_ptr, stride_kt, stride_kh, t, c, s, halves, K_HEADS, HALF, BLOCK_KH, BLOCK_HALF)


def apply_rope_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> None:
    """Rotates q: [tokens, heads, head_dim] and k: [tokens, kv_heads, head_dim] in place (any token and
    head strides, last dim contiguous). positions: [tokens] int64; cos, sin: [max_positions, head_dim]
    float32. Positions must be < max_positions (not checked: that would sync with the device)."""
    check_rope_operands(q, k, positions, cos, sin)
    tokens, heads, head_dim = q.shape
    if tokens == 0:
        return
    half = head_dim // 2
    _rope_kernel[(tokens,)](q, k, positions, cos, sin, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                            cos.stride(0), sin.stride(0), Q_HEADS=heads, K_HEADS=k.shape[1], HALF=half,
                            BLOCK_QH=next_power_of_2(heads), BLOCK_KH=next_power_of_2(k.shape[1]),
                            BLOCK_HALF=next_power_of_2(half), num_warps=4)


def check_rope_operands(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                        sin: torch.Tensor) -> None:
    check_tensor("q", q, FLOAT_DTYPES, 3)
    check_tensor("k", k, (q.dtype,), 3, like=q)
    check_tensor("positions", positions, (torch.int64,), 1, like=q)
    check_tensor("cos", cos, (torch.float32,), 2, like=q)
    check_tensor("sin", sin, (torch.float32,), 2, like=q)
    tokens, heads, head_dim = q.shape
    if k.shape[0] != tokens or k.shape[2] != head_dim:
        raise ValueError(f"k: must be [{tokens}, kv_heads, {head_dim}] like q {tuple(q.shape)}, "
                         f"got {tuple(k.shape)}")
    if head_dim % 2:
        raise ValueError(f"q: head_dim must be even to rotate its halves, got {head_dim}")
    if positions.shape[0] != tokens:
        raise ValueError(f"positions: must have one entry per token ({tokens}), got {positions.shape[0]}")
    for name, table in (("cos", cos), ("sin", sin)):
        if table.shape[1] != head_dim:
            raise ValueError(f"{name}: must be [max_positions, {head_dim}], got {tuple(table.shape)}")
    for name, t in (("q", q), ("k", k), ("positions", positions), ("cos", cos), ("sin", sin)):
        check_last_dim_contiguous(name, t)
