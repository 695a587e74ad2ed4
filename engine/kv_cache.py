"""The paged KV pool: one preallocated tensor of fixed-size blocks for all layers, in the model's dtype
or in fp8 (kv_cache_dtype; half the bytes per block, so twice the blocks for the same memory)."""
from __future__ import annotations

import psutil
import torch

from engine.layers.attention.kv_quant import KV_FP8
from engine.models.config import ModelConfig

# EngineConfig.kv_cache_dtype -> the pool's dtype; None: the model's own.
KV_CACHE_DTYPES: dict[str, torch.dtype | None] = {"auto": None, "fp8": KV_FP8}


def kv_cache_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    return KV_CACHE_DTYPES[name] or model_dtype


def bytes_per_block(cfg: ModelConfig, block_size: int, cache_dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=cache_dtype).element_size()
    return cfg.num_layers * 2 * block_size * cfg.num_kv_heads * cfg.head_dim * elem


def free_memory_bytes(device: torch.device) -> int:
    """Memory the pool could take now: free GPU memory (after the weights are loaded), or available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def num_blocks_for_budget(cfg: ModelConfig, block_size: int, cache_dtype: torch.dtype, device: torch.device,
                          fraction: float, max_useful_blocks: int, reserved_bytes: int = 0) -> int:
    """Like TensorRT-LLM's kv_cache_free_gpu_mem_fraction, less what a step's activations need
    (`reserved_bytes`, measured by a profiling forward); never more blocks than can ever be used."""
    budget = int(free_memory_bytes(device) * fraction) - reserved_bytes
    return max(1, min(budget // bytes_per_block(cfg, block_size, cache_dtype), max_useful_blocks))


def allocate_kv_cache(cfg: ModelConfig, num_blocks: int, block_size: int, cache_dtype: torch.dtype,
                      device: torch.device) -> list[torch.Tensor]:
    # One allocation; each layer gets a view [2 (k, v), num_blocks, block_size, kv_heads, head_dim].
    # In memory a block holds each KV head's slots together ([kv_head, slot, dim], TensorRT-LLM's block
    # layout), so a decode tile of one head reads block_size x head_dim contiguous values; the kernels see
    # the shape above through its strides. H100, 7B: +0.9% tok/s over slot-major blocks with an fp8
    # cache at 512 x 128/128 and 112 x 2048/128, +0.4% bf16 at 256 x 128/128 (docs/benchmarks.md, session 16).
    # Left uninitialised (on CPU its pages are only touched as blocks are used); attention never reads
    # a slot past a sequence's end.
    pool = torch.empty(cfg.num_layers, 2, num_blocks, cfg.num_kv_heads, block_size, cfg.head_dim,
                       dtype=cache_dtype, device=device)
    return list(pool.transpose(-3, -2).unbind(0))
