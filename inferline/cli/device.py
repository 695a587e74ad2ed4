"""Device choice and clock-safe synchronization shared by `run` and `bench`."""
from __future__ import annotations

import torch

DEVICE_HELP = "cpu, cuda or cuda:N; auto picks cuda when a GPU is visible, else cpu"
DTYPE_HELP = ("float32, bfloat16 or float16; default: the engine's (the checkpoint's own dtype on GPU, "
              "float32 on CPU)")
KV_CACHE_DTYPE_HELP = ("KV cache dtype: auto (the model's dtype) or fp8 (e4m3: half the bytes per token, so twice "
                       "the KV blocks; CUDA needs compute capability >= 8.9)")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device  # EngineConfig validates it and names the field if it is wrong


def synchronize(device: str | torch.device) -> None:
    # CUDA kernels run asynchronously: without this a clock read measures launch time, not work.
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
