"""Scatters this step's keys and values into the paged KV cache: token t goes to cache slot
slot_mapping[t] = block * block_size + offset, for every KV head.

One program per token moves that token's whole [kv_heads, head_dim] K and V rows, so k and v share one
launch and the slot is decoded once. The cache is addressed through its 4-D strides: the per-layer K and
V caches are views into one pool. A negative slot marks a padding token (a CUDA-graph batch padded to
its captured size) and is skipped. An fp8 cache (kv_quant.py) gets K * (1 / k_scale) and V * (1 / v_scale),
computed in float32, saturated to +-448 and rounded to e4m3.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.layers.attention.kv_quant import KV_FP8, KV_FP8_MAX, check_kv_scales
from engine.layers.triton import FLOAT_DTYPES, check_last_dim_contiguous, check_shape, check_tensor, next_power_of_2


@triton.jit
def _to_fp8(x, inv_scale, FP8_MAX: tl.constexpr):
    # Saturated before the cast: torch's cast gives NaN past +-448 and the interpreter's garbage, so only
    # clamped values come out the same on every path.
    return tl.clamp(x.to(tl.float32) * inv_scale, -FP8_MAX, FP8_MAX).to(tl.float8e4nv)


@triton.jit
def store_at_slot(k_cache_ptr, v_cache_ptr, slot, k, v, k_offsets, v_offsets, mask, stride_kcb, stride_kcs,
                  stride_vcb, stride_vcs, k_inv_scale, v_inv_scale, BLOCK_SIZE: tl.constexpr, FP8: tl.constexpr,
                  FP8_MAX: tl.constexpr):
    """Writes one token's k and v (activation dtype) into cache slot `slot` (block slot // BLOCK_SIZE, row
    slot % BLOCK_SIZE), at k_offsets / v_offsets within the row (heads and dims through the caches'
    strides); an fp8 cache gets them scaled, saturated and rounded to e4m3. Every kernel that stores
    K/V (this module's, rope_store_kv, split attention) goes through it."""
    if FP8:
        k, v = _to_fp8(k, k_inv_scale, FP8_MAX), _to_fp8(v, v_inv_scale, FP8_MAX)
    block = slot // BLOCK_SIZE
    row = slot % BLOCK_SIZE
    tl.store(k_cache_ptr + block * stride_kcb + row * stride_kcs + k_offsets, k, mask=mask)
    tl.store(v_cache_ptr + block * stride_vcb + row * stride_vcs + v_offsets, v, mask=mask)


@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, k_inv_scale, v_inv_scale,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
                     KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, FP8: tl.constexpr, FP8_MAX: tl.constexpr):
    # k, v: [tokens, KV_HEADS, HEAD_DIM]; k_cache, v_cache: [num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM]
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t)
    if slot < 0:
        return
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    mask = (heads < KV_HEADS) & (dims < HEAD_DIM)  # [BLOCK_H, BLOCK_D]
    k = tl.load(k_ptr + t * stride_kt + heads * stride_kh + dims, mask=mask)
    v = tl.load(v_ptr + t * stride_vt + heads * stride_vh + dims, mask=mask)
    store_at_slot(k_cache_ptr, v_cache_ptr, slot, k, v, heads * stride_kch + dims, heads * stride_vch + dims, mask,
                  stride_kcb, stride_kcs, stride_vcb, stride_vcs, k_inv_scale, v_inv_scale, BLOCK_SIZE, FP8, FP8_MAX)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """k, v: [tokens, kv_heads, head_dim] (token and head strides free, last dim contiguous);
    k_cache, v_cache: [num_blocks, block_size, kv_heads, head_dim] in k's dtype, or both float8_e4m3fn
    holding k / k_scale and v / v_scale (Python floats; 1.0 for any other cache); slot_mapping: [tokens]
    int64. Writes k[t], v[t] at slot slot_mapping[t] (skipped when negative). Slots must be below
    num_blocks * block_size: not checked, as that would sync with the device."""
    check_store_operands(k, v, k_cache, v_cache, slot_mapping)
    check_kv_scales(k_cache.dtype, k_scale, v_scale)
    tokens, kv_heads, head_dim = k.shape
    if tokens == 0 or kv_heads == 0 or head_dim == 0:
        return
    _store_kv_kernel[(tokens,)](
        k, v, k_cache, v_cache, slot_mapping, 1.0 / k_scale, 1.0 / v_scale,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), KV_HEADS=kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=k_cache.shape[1],
        BLOCK_H=next_power_of_2(kv_heads), BLOCK_D=next_power_of_2(head_dim),
        FP8=k_cache.dtype == KV_FP8, FP8_MAX=KV_FP8_MAX, num_warps=4)


def check_store_operands(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         slot_mapping: torch.Tensor) -> None:
    check_tensor("k", k, FLOAT_DTYPES, 3)
    check_tensor("v", v, (k.dtype,), 3, like=k)
    check_tensor("k_cache", k_cache, (k.dtype, KV_FP8), 4, like=k)
    check_tensor("v_cache", v_cache, (k_cache.dtype,), 4, like=k)
    check_tensor("slot_mapping", slot_mapping, (torch.int64,), 1, like=k)
    tokens, kv_heads, head_dim = k.shape
    check_shape("v", v, tuple(k.shape), "k's shape")
    if tuple(k_cache.shape[2:]) != (kv_heads, head_dim):
        raise ValueError(f"k_cache: must be [num_blocks, block_size, {kv_heads}, {head_dim}] to hold k "
                         f"{tuple(k.shape)}, got {tuple(k_cache.shape)}")
    check_shape("v_cache", v_cache, tuple(k_cache.shape), "k_cache's shape")
    check_shape("slot_mapping", slot_mapping, (tokens,), "one slot per token of k")
    for name, t in (("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache), ("slot_mapping", slot_mapping)):
        check_last_dim_contiguous(name, t)
