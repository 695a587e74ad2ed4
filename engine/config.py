"""Engine configuration: one frozen object, validated once when it is made."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.errors import InvalidParameterError
from engine.kv_cache import KV_CACHE_DTYPES
from engine.layers.attention import BACKEND_CHOICES
from engine.scheduler import SchedulerConfig

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
POLICIES = ("max_utilization", "guaranteed_no_evict")
BATCHING = ("inflight", "static")
# The Triton kernels convert to and from e4m3 with instructions of Ada and Hopper (sm_89) and newer.
FP8_KV_MIN_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class EngineConfig:
    model: str  # bundled model name, HF checkpoint folder or .gguf file
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    dtype: str | None = None  # None: the checkpoint's own dtype on GPU, float32 on CPU
    max_batch_size: int = 64
    max_num_tokens: int = 8192  # per-step token budget (prefill chunks + decodes)
    max_seq_len: int | None = None  # prompt + output cap; None: the model's context length
    block_size: int = 16  # tokens per KV block
    num_kv_blocks: int | None = None  # pool size; None: sized from kv_cache_free_mem_fraction
    kv_cache_free_mem_fraction: float = 0.9  # share of free memory (after weights) the KV pool may take
    # "auto": the model's dtype; "fp8": float8_e4m3fn, half the bytes per token (engine/layers/attention/kv_quant.py)
    kv_cache_dtype: str = "auto"
    scheduler_policy: str = "max_utilization"
    batching: str = "inflight"
    attention_backend: str = "auto"  # "auto": triton_paged on CUDA, torch_paged elsewhere
    # Replay decode steps from CUDA graphs (CUDA with triton_paged attention); off: every step eager.
    cuda_graphs: bool = True
    # Schedule and launch each step before the previous one's tokens are read back (engine.py); None: on
    # for CUDA, where the host's step work then overlaps the GPU's, off on a CPU, where it cannot.
    async_scheduling: bool | None = None

    def __post_init__(self) -> None:
        def check(ok: bool, field: str, problem: str) -> None:
            if not ok:
                raise InvalidParameterError(field, problem)

        check(isinstance(self.model, str) and bool(self.model), "model", "must name a model")
        check(self.device == "cpu" or self.device.startswith("cuda"), "device",
              f"must be cpu or cuda[:N], got {self.device!r}")
        check(self.dtype is None or self.dtype in DTYPES, "dtype",
              f"must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        check(self.max_batch_size >= 1, "max_batch_size", f"must be >= 1, got {self.max_batch_size}")
        check(self.max_num_tokens >= self.max_batch_size, "max_num_tokens",
              f"must be >= max_batch_size ({self.max_batch_size}) so every running sequence can decode each step, "
              f"got {self.max_num_tokens}")
        check(self.max_seq_len is None or self.max_seq_len >= 2, "max_seq_len", f"must be >= 2, got {self.max_seq_len}")
        check(self.block_size >= 1, "block_size", f"must be >= 1, got {self.block_size}")
        check(self.num_kv_blocks is None or self.num_kv_blocks >= 1, "num_kv_blocks",
              f"must be >= 1, got {self.num_kv_blocks}")
        check(0 < self.kv_cache_free_mem_fraction <= 1, "kv_cache_free_mem_fraction",
              f"must be in (0, 1], got {self.kv_cache_free_mem_fraction}")
        check(self.scheduler_policy in POLICIES, "scheduler_policy",
              f"must be one of {POLICIES}, got {self.scheduler_policy!r}")
        check(self.batching in BATCHING, "batching", f"must be one of {BATCHING}, got {self.batching!r}")
        check(self.attention_backend in BACKEND_CHOICES, "attention_backend",
              f"must be one of {list(BACKEND_CHOICES)}, got {self.attention_backend!r}")
        check(self.kv_cache_dtype in KV_CACHE_DTYPES, "kv_cache_dtype",
              f"must be one of {list(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}")
        if self.device.startswith("cuda"):
            check(torch.cuda.is_available(), "device", "CUDA was asked for but no CUDA device is available")
            if self.kv_cache_dtype == "fp8":
                device = torch.device(self.device)
                capability = torch.cuda.get_device_capability(device)
                check(capability >= FP8_KV_MIN_CAPABILITY, "kv_cache_dtype",
                      f"fp8 needs CUDA compute capability >= 8.9 (Ada, Hopper or newer); "
                      f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}")

    @property
    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(max_batch_size=self.max_batch_size, max_num_tokens=self.max_num_tokens,
                               policy=self.scheduler_policy, batching=self.batching)  # type: ignore[arg-type]
