"""Input checks the Triton kernels' wrappers share (engine/layers/triton, engine/layers/attention/triton,
engine/layers/quantization/triton). No triton here, so the checks stay importable where triton is
missing. They only read shapes, dtypes and strides: wrappers run during CUDA graph capture, where anything
that syncs with the device (.item(), .tolist(), reading a CUDA tensor's values) is not allowed.
"""
from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """Read at call time: tests set TRITON_INTERPRET after other code may have imported this."""
    return os.environ.get("TRITON_INTERPRET") == "1"


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_tensor(name: str, t: object, dtypes: tuple[torch.dtype, ...] | None, dim: int,
                 like: torch.Tensor | None = None) -> None:
    """`t` must be a `dim`-D tensor of one of `dtypes` (None: any floating dtype), on `like`'s device, or
    (without `like`) on a CUDA device, where the CPU is allowed only under Triton's interpreter."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is None and not t.is_floating_point():
        raise ValueError(f"{name}: dtype must be floating point, got {t.dtype}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name}: dtype must be {' or '.join(str(d) for d in dtypes)}, got {t.dtype}")
    if t.dim() != dim:
        raise ValueError(f"{name}: must be {dim}-D, got shape {tuple(t.shape)}")
    if like is None and not t.is_cuda and not interpreting():
        raise ValueError(f"{name}: must be on a CUDA device (or TRITON_INTERPRET=1), got {t.device}")
    if like is not None and t.device != like.device:
        raise ValueError(f"{name}: is on {t.device}, but must be on {like.device}")


def check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...], why: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: must have shape {tuple(shape)} ({why}), got {tuple(t.shape)}")


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    # Kernels address rows and heads through strides but step through the last dim by one element:
    # that keeps loads vectorised and covers the views the engine passes (slices of a fused qkv output).
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: its last dim must be contiguous (stride 1), got strides {t.stride()}")


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (tl.arange needs power-of-two lengths)."""
    return 1 << max(n - 1, 0).bit_length()
