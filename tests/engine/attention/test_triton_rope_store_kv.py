"""RoPE fused with the KV-cache store gives bit for bit what the two kernels give one after the other:
the same rotated q and the same cache, fp8 included, padding slots skipped, k left unrotated unless asked."""
from __future__ import annotations

import pytest
import torch

from tests.engine.triton_env import DEVICE, DTYPES  # first: it sets up Triton's interpreter without CUDA

from engine.layers.attention.kv_quant import KV_FP8  # noqa: E402
from engine.layers.attention.triton.kv_store import store_kv  # noqa: E402
from engine.layers.attention.triton.rope_store_kv import rope_store_kv  # noqa: E402
from engine.layers.rotary import RotaryEmbedding  # noqa: E402
from engine.layers.triton.rotary import apply_rope_  # noqa: E402


def operands(tokens: int, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, seed: int = 0):
    """q, k, v as slices of one fused qkv output, the caches as layer 1 of a pool with padded head_dim."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, generator=g).to(dtype).to(DEVICE)
    q = qkv[:, :heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim:(heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    v = qkv[:, (heads + kv_heads) * head_dim:].view(tokens, kv_heads, head_dim)
    pool = torch.randn(2, 2, 6, 4, kv_heads, head_dim + 8, generator=g).to(dtype).to(DEVICE)
    positions = torch.randint(0, 500, (tokens,), generator=g).to(DEVICE)
    return qkv, q, k, v, pool, positions


def run_both(heads, kv_heads, head_dim, dtype, cache_dtype, slots, rotate_k=False):
    rotary = RotaryEmbedding(head_dim, 512, 10000.0, None).to(DEVICE)
    fused_qkv, q, k, v, fused_pool, positions = operands(len(slots), heads, kv_heads, head_dim, dtype)
    split_qkv, split_pool = fused_qkv.clone(), fused_pool.clone().to(cache_dtype)
    fused_pool = fused_pool.to(cache_dtype)
    d, hq, hk = head_dim, heads * head_dim, kv_heads * head_dim
    views = lambda qkv: (qkv[:, :hq].view(-1, heads, d), qkv[:, hq:hq + hk].view(-1, kv_heads, d),  # noqa: E731
                         qkv[:, hq + hk:].view(-1, kv_heads, d))
    scales = (0.5, 2.0) if cache_dtype == KV_FP8 else (1.0, 1.0)

    sq, sk, sv = views(split_qkv)
    apply_rope_(sq, sk, positions, rotary.cos, rotary.sin)
    store_kv(sk, sv, split_pool[1, 0, ..., :d], split_pool[1, 1, ..., :d], slots, *scales)
    k_before = k.clone()
    rope_store_kv(q, k, v, fused_pool[1, 0, ..., :d], fused_pool[1, 1, ..., :d], slots, positions,
                  rotary.cos, rotary.sin, *scales, rotate_k=rotate_k)
    return (q, sq), (fused_pool, split_pool), (k, k_before, sk)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 2, 64), (6, 3, 80)])
def test_same_bits_as_rope_then_store(heads, kv_heads, head_dim, dtype):
    slots = torch.tensor([13, 0, -1, 23, 6], device=DEVICE)  # block 3 slot 1, block 0, padding, ...
    (q, q_ref), (pool, pool_ref), (k, k_before, _) = run_both(heads, kv_heads, head_dim, dtype, dtype, slots)
    assert torch.equal(q, q_ref)  # the padding token's q is rotated too
    assert torch.equal(pool, pool_ref)
    assert torch.equal(k, k_before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotate_k_leaves_k_rotated_as_apply_rope_does(dtype):
    slots = torch.tensor([13, 0, -1, 23, 6], device=DEVICE)
    (q, q_ref), (pool, pool_ref), (k, k_before, k_ref) = run_both(4, 2, 64, dtype, dtype, slots, rotate_k=True)
    assert torch.equal(q, q_ref) and torch.equal(pool, pool_ref)
    stored = slots >= 0
    assert torch.equal(k[stored], k_ref[stored])
    assert torch.equal(k[~stored], k_before[~stored])  # the padding token's k is left as it was


@pytest.mark.gpu  # e4m3 conversions need sm_89+ (the interpreter's fp8 casts differ from the GPU's)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_cache_same_bits_as_rope_then_store(dtype):
    slots = torch.tensor([5, 17, -1, 2], device=DEVICE)
    (q, q_ref), (pool, pool_ref), _ = run_both(8, 2, 128, dtype, KV_FP8, slots)
    assert torch.equal(q, q_ref)
    assert torch.equal(pool.view(torch.uint8), pool_ref.view(torch.uint8))


def test_rejects_bad_inputs():
    _, q, k, v, pool, positions = operands(3, 4, 2, 64, torch.float32)
    rotary = RotaryEmbedding(64, 512, 10000.0, None).to(DEVICE)
    caches = pool[1, 0, ..., :64], pool[1, 1, ..., :64]
    slots = torch.arange(3, device=DEVICE)
    with pytest.raises(ValueError, match=r"^slot_mapping: .*dtype"):
        rope_store_kv(q, k, v, *caches, slots.int(), positions, rotary.cos, rotary.sin)
    with pytest.raises(ValueError, match=r"^positions: .*dtype"):
        rope_store_kv(q, k, v, *caches, slots, positions.int(), rotary.cos, rotary.sin)
    with pytest.raises(ValueError, match=r"^cos: .*dtype"):
        rope_store_kv(q, k, v, *caches, slots, positions, rotary.cos.half(), rotary.sin)
