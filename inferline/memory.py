"""Peak memory of one side of a benchmark (our engine or HF transformers), counted from just before
that side's model is loaded.

CUDA: the caching allocator's peak of *allocated* bytes (weights + KV cache + activations) minus what
was allocated before the load; reserved-but-free cache and the CUDA context are not counted.
CPU: there is no allocator counter, so a background thread samples the process RSS every few ms; the
peak is the highest sample minus the RSS just before the load. Spikes shorter than the interval can
be missed, and RSS counts pages when they are touched (an untouched KV pool costs nothing yet).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading

import psutil
import torch

GIB = 1 << 30


def release_memory(device: torch.device) -> None:
    """Give freed memory back before measuring the next side, so its baseline is honest."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    # glibc keeps freed heap pages in its arenas; the next side would reuse them without RSS growing,
    # which would under-count its memory. malloc_trim returns them to the OS.
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


def _init_cuda_libraries(device: torch.device) -> None:
    # cuBLAS(Lt) takes its workspace (32 MiB on Hopper) from the caching allocator on first use and keeps
    # it: without this the first side measured would be charged for it and the second would not.
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.ones(16, 16, device=device, dtype=dtype)
        torch.nn.functional.linear(x, x, x[0])
        x @ x


class PeakMemoryTracker:
    """Use as a context manager around the load and the runs; `checkpoint()` closes a window (the
    load, then each case) and returns that window's peak above the baseline, in bytes."""

    def __init__(self, device: torch.device, interval_s: float = 0.002):
        self.device = device
        self.interval_s = interval_s
        self.baseline = 0
        self._process = psutil.Process()
        self._peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemoryTracker":
        release_memory(self.device)
        if self.device.type == "cuda":
            _init_cuda_libraries(self.device)
            torch.cuda.synchronize(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.baseline = self._peak = self._rss()
            self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def checkpoint(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            now = self._rss()
            with self._lock:
                peak, self._peak = max(self._peak, now), now
        return max(0, peak - self.baseline)

    def _rss(self) -> int:
        return self._process.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = self._rss()
            with self._lock:
                self._peak = max(self._peak, rss)
