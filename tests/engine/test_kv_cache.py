"""The paged KV pool's layout: the [2, blocks, block_size, kv_heads, head_dim] view every attention
backend indexes, over blocks that hold each KV head's slots together in memory (TensorRT-LLM's layout)."""
from __future__ import annotations

import dataclasses

import torch

from engine.kv_cache import allocate_kv_cache
from engine.layers.attention.kv_quant import KV_FP8
from engine.layers.attention.torch_paged import TorchPagedAttention
from tests.engine.test_fp8_kv_cache import LLAMA_7B

CPU = torch.device("cpu")
CFG = dataclasses.replace(LLAMA_7B, num_layers=2, num_heads=6, num_kv_heads=3, head_dim=8)


def test_each_block_holds_a_kv_heads_slots_together():
    caches = allocate_kv_cache(CFG, num_blocks=5, block_size=16, cache_dtype=torch.float32, device=CPU)
    assert len(caches) == CFG.num_layers
    for cache in caches:
        assert cache.shape == (2, 5, 16, 3, 8)
        # block, slot, head, dim: a head's 16 slots are 16 x 8 contiguous values
        assert cache.stride()[1:] == (3 * 16 * 8, 8, 16 * 8, 1)
    caches[0].fill_(1.0)
    caches[1].fill_(2.0)
    assert (caches[0] == 1.0).all()  # the layers' views do not overlap


def test_the_torch_backend_stores_each_token_where_the_kernels_read_it():
    for dtype in (torch.float32, KV_FP8):
        (cache,) = allocate_kv_cache(dataclasses.replace(CFG, num_layers=1), 4, 16, dtype, CPU)
        cache.view(torch.uint8).zero_()
        new = torch.randn(5, 3, 8).to(dtype)
        slots = torch.tensor([0, 17, 31, 32, 63])
        TorchPagedAttention(6, 3, 8, 1.0)._store(cache[0], new, slots)
        stored = cache[0][slots // 16, slots % 16]  # [tokens, kv_heads, head_dim]
        assert torch.equal(stored.view(torch.uint8), new.view(torch.uint8))
        assert int(cache[0].view(torch.uint8).count_nonzero()) == int(new.view(torch.uint8).count_nonzero())
