"""Host-to-device copies that never wait for the device.

A copy from pageable host memory lets the CUDA driver synchronize with the stream first (it must stage
the bytes), so the host would wait for every step already queued, which is what async scheduling
exists to avoid (measured: the first token waited for the decode step queued behind the prompt). Going
through pinned memory makes the copy a plain queued DMA; torch's caching host allocator keeps each
pinned buffer alive until its copy has run."""
from __future__ import annotations

import numpy as np
import torch


def pinned(values: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """`values` on the host, in pinned memory where `device` is a GPU."""
    t = torch.from_numpy(values) if isinstance(values, np.ndarray) else values
    return t.pin_memory() if device.type == "cuda" else t


def to_device(values: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    return pinned(values, device).to(device, non_blocking=True)


def copy_into(dst: torch.Tensor, values: np.ndarray | torch.Tensor) -> None:
    dst.copy_(pinned(values, dst.device), non_blocking=True)
