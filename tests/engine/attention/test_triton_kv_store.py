"""The Triton KV-cache store: each token's K/V lands in its slot, through the cache's strides, padding
slots (negative) are skipped and every other slot is left as it was."""
from __future__ import annotations

import pytest
import torch

from tests.engine.triton_env import DEVICE, DTYPES  # first: it sets up Triton's interpreter without CUDA

from engine.layers.attention.kv_quant import KV_FP8, KV_FP8_MAX, quantize_kv  # noqa: E402
from engine.layers.attention.triton.kv_store import store_kv  # noqa: E402
from tests.engine.attention.fp8 import e4m3_values  # noqa: E402


def operands(tokens: int, kv_heads: int, head_dim: int, dtype: torch.dtype, seed: int = 0):
    """k, v as slices of a fused qkv output (4 query heads first) and the caches as layer 1 of a pool
    whose head_dim is padded, so neither side is contiguous."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(tokens, (4 + 2 * kv_heads) * head_dim, generator=g).to(dtype).to(DEVICE)
    k = qkv[:, 4 * head_dim:(4 + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    v = qkv[:, (4 + kv_heads) * head_dim:].view(tokens, kv_heads, head_dim)
    pool = torch.randn(2, 2, 6, 4, kv_heads, head_dim + 8, generator=g).to(dtype).to(DEVICE)
    return k, v, pool, pool[1, 0, ..., :head_dim], pool[1, 1, ..., :head_dim]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kv_heads,head_dim", [(2, 64), (3, 80)])
def test_writes_each_token_to_its_slot(kv_heads, head_dim, dtype):
    k, v, pool, k_cache, v_cache = operands(5, kv_heads, head_dim, dtype)
    assert not k.is_contiguous() and not k_cache.is_contiguous()
    slots = torch.tensor([13, 0, -1, 23, 6], device=DEVICE)  # block 3 slot 1, block 0, padding, ...
    before = pool.clone()
    store_kv(k, v, k_cache, v_cache, slots)
    expected = before.clone()
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            expected[1, 0, slot // 4, slot % 4, :, :head_dim] = k[t]
            expected[1, 1, slot // 4, slot % 4, :, :head_dim] = v[t]
    assert torch.equal(pool, expected)  # padding token and all other slots (and the padded dims) untouched


def test_all_padding_and_empty():
    k, v, pool, k_cache, v_cache = operands(3, 2, 64, torch.float32)
    before = pool.clone()
    store_kv(k, v, k_cache, v_cache, torch.full((3,), -1, device=DEVICE))
    store_kv(k[:0], v[:0], k_cache, v_cache, torch.empty(0, dtype=torch.int64, device=DEVICE))
    assert torch.equal(pool, before)


def test_rejects_bad_inputs():
    k, v, _, k_cache, v_cache = operands(3, 2, 64, torch.float32)
    slots = torch.arange(3, device=DEVICE)
    with pytest.raises(ValueError, match=r"^slot_mapping: .*dtype"):
        store_kv(k, v, k_cache, v_cache, slots.int())
    with pytest.raises(ValueError, match=r"^slot_mapping: .*shape"):
        store_kv(k, v, k_cache, v_cache, slots[:2])
    with pytest.raises(ValueError, match=r"^v: .*dtype"):
        store_kv(k, v.half(), k_cache, v_cache, slots)
    with pytest.raises(ValueError, match=r"^k_cache: .*dtype"):
        store_kv(k, v, k_cache.half(), v_cache, slots)
    with pytest.raises(ValueError, match=r"^k_cache: must be \[num_blocks, block_size, 2, 64\]"):
        store_kv(k, v, k_cache[:, :, :1], v_cache, slots)
    with pytest.raises(ValueError, match=r"^v_cache: .*shape"):
        store_kv(k, v, k_cache, v_cache[:3], slots)
    with pytest.raises(ValueError, match=r"^k: .*last dim"):
        store_kv(k.transpose(1, 2).contiguous().transpose(1, 2), v, k_cache, v_cache, slots)


# -- fp8 (e4m3) caches: exact values on CPU, rounding on CUDA (see fp8.py) ------------------------------


def fp8_operands(tokens: int, kv_heads: int, head_dim: int, dtype: torch.dtype, k_scale: float, v_scale: float,
                 exact: bool, seed: int = 0):
    """As operands(), with an fp8 pool, and k, v either exactly representable (fp8.py) or random."""
    k, v, pool, _, _ = operands(tokens, kv_heads, head_dim, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        if exact:
            k.copy_(e4m3_values(k.shape, k_scale, g).to(dtype))
            v.copy_(e4m3_values(v.shape, v_scale, g).to(dtype))
        else:  # random, a few values past the range
            k.mul_(200 * k_scale)
            v.mul_(200 * v_scale)
    pool = pool.float().clamp(-400, 400).to(KV_FP8)
    return k, v, pool, pool[1, 0, ..., :head_dim], pool[1, 1, ..., :head_dim]


def expected_fp8_pool(before, k, v, slots, k_scale, v_scale, head_dim):
    """What the store must leave: quantize_kv (the torch backend's store) at each token's slot."""
    expected = before.clone().view(torch.uint8)
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            expected[1, 0, slot // 4, slot % 4, :, :head_dim] = quantize_kv(k[t].cpu(), k_scale).view(torch.uint8)
            expected[1, 1, slot // 4, slot % 4, :, :head_dim] = quantize_kv(v[t].cpu(), v_scale).view(torch.uint8)
    return expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k_scale,v_scale", [(1.0, 1.0), (0.25, 4.0)])
def test_fp8_cache_gets_scaled_saturated_e4m3(k_scale, v_scale, dtype):
    k, v, pool, k_cache, v_cache = fp8_operands(5, 3, 80, dtype, k_scale, v_scale, exact=True)
    slots = torch.tensor([13, 0, -1, 23, 6], device=DEVICE)
    before = pool.cpu().clone()
    store_kv(k, v, k_cache, v_cache, slots, k_scale, v_scale)
    assert torch.equal(pool.cpu().view(torch.uint8), expected_fp8_pool(before, k, v, slots, k_scale, v_scale, 80))
    written = pool.cpu().float()
    assert torch.isfinite(written).all() and written.abs().max() == KV_FP8_MAX  # saturated, never NaN


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_fp8_rounding_matches_torch(dtype):
    """Random values and scales that are no power of two: the kernel's float32 multiply by 1 / scale and
    round-to-nearest-even cast give exactly the torch backend's bytes."""
    k, v, pool, k_cache, v_cache = fp8_operands(16, 8, 128, dtype, 0.37, 1.3, exact=False, seed=4)
    slots = torch.randperm(6 * 4, device=DEVICE)[:16]  # the pool has 6 blocks of 4
    before = pool.cpu().clone()
    store_kv(k, v, k_cache, v_cache, slots, 0.37, 1.3)
    assert torch.equal(pool.cpu().view(torch.uint8), expected_fp8_pool(before, k, v, slots, 0.37, 1.3, 128))


def test_fp8_rejects_mixed_caches_and_stray_scales():
    k, v, _, k_cache, v_cache = fp8_operands(3, 2, 64, torch.float32, 1.0, 1.0, exact=True)
    slots = torch.arange(3, device=DEVICE)
    with pytest.raises(ValueError, match=r"^v_cache: .*dtype must be torch.float8_e4m3fn"):
        store_kv(k, v, k_cache, v_cache.float(), slots)
    with pytest.raises(ValueError, match=r"^k_cache: .*dtype must be torch.float32 or torch.float8_e4m3fn"):
        store_kv(k, v, k_cache.half(), v_cache, slots)
    with pytest.raises(ValueError, match=r"^k_scale: only an fp8"):
        store_kv(k, v, k_cache.float(), v_cache.float(), slots, k_scale=2.0)
    with pytest.raises(ValueError, match=r"^v_scale: must be finite and > 0"):
        store_kv(k, v, k_cache, v_cache, slots, v_scale=0.0)
