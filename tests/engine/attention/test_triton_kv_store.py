"""The Triton KV-cache store: each token's K/V lands in its slot, through the cache's strides, padding
slots (negative) are skipped and every other slot is left as it was."""
from __future__ import annotations

import pytest
import torch

from tests.engine.triton_env import DEVICE, DTYPES  # first: it sets up Triton's interpreter without CUDA

from engine.layers.attention.triton.kv_store import store_kv  # noqa: E402


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
