"""Triton GEMM kernels for the weight-only formats (W8A16, W4A16): the CUDA path of their layers.
Kernel modules import triton; this one holds only the checks and launch choices they share."""
from __future__ import annotations

import functools
import os

import torch

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_M_BUCKET = 256  # prefill sizes above this share one tuning


def interpreting() -> bool:
    """Read at call time: tests set TRITON_INTERPRET after other code may have imported this."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def m_bucket(m: int) -> int:
    """Autotune key for the row count: decode batch sizes change every step, so tune per power of two
    rather than per exact M."""
    return min(1 << max(m - 1, 0).bit_length(), MAX_M_BUCKET)


def check_activations(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"x: dtype must be float16, bfloat16 or float32, got {getattr(x, 'dtype', type(x))}")
    if x.dim() != 2:
        raise ValueError(f"x: must be 2-D [M, K], got shape {tuple(x.shape)}")
    if not x.is_cuda and not interpreting():
        raise ValueError(f"x: must be on a CUDA device (or TRITON_INTERPRET=1), got {x.device}")


def check_tensor(name: str, t: torch.Tensor, x: torch.Tensor, dtypes: tuple[torch.dtype, ...] | None,
                 dim: int) -> None:
    """`t` must be a `dim`-D tensor on x's device with one of `dtypes` (None: any floating dtype)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is None and not t.is_floating_point():
        raise ValueError(f"{name}: dtype must be floating point, got {t.dtype}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name}: dtype must be {' or '.join(str(d) for d in dtypes)}, got {t.dtype}")
    if t.dim() != dim:
        raise ValueError(f"{name}: must be {dim}-D, got shape {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name}: is on {t.device}, but x is on {x.device}")


def check_int8_operands(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> None:
    """W8A16 (the GEMM and the GEMV): x [M, K], qweight int8 [N, K] contiguous, scales [N] float."""
    check_activations(x)
    check_tensor("qweight", qweight, x, (torch.int8,), 2)
    check_tensor("scales", scales, x, None, 1)
    n, k = qweight.shape
    if k != x.shape[1]:
        raise ValueError(f"qweight: has K={k} input columns, but x has K={x.shape[1]}")
    if scales.shape[0] != n:
        raise ValueError(f"scales: has {scales.shape[0]} entries, but qweight has N={n} rows")
    if not qweight.is_contiguous():
        raise ValueError("qweight: must be contiguous")


def check_int4_operands(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                        group_size: int) -> None:
    """W4A16 (the GEMM and the GEMV): x [M, K], qweight uint8 [N, ceil(K/2)] contiguous, scales [N, G]
    float and zeros uint8 [N, G], G = ceil(K / group_size), group_size a positive multiple of 32."""
    check_activations(x)
    check_tensor("qweight", qweight, x, (torch.uint8,), 2)
    check_tensor("scales", scales, x, None, 2)
    check_tensor("zeros", zeros, x, (torch.uint8,), 2)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0 or group_size % 32:
        raise ValueError(f"group_size: must be a positive multiple of 32, got {group_size!r}")
    k, n = x.shape[1], qweight.shape[0]
    if qweight.shape[1] != (k + 1) // 2:
        raise ValueError(f"qweight: has {qweight.shape[1]} bytes per row, but x's K={k} needs {(k + 1) // 2}")
    groups = -(-k // group_size)
    for name, t in (("scales", scales), ("zeros", zeros)):
        if tuple(t.shape) != (n, groups):
            raise ValueError(f"{name}: expected shape ({n}, {groups}) for N={n}, K={k}, group_size={group_size}, "
                             f"got {tuple(t.shape)}")
    if not qweight.is_contiguous():
        raise ValueError("qweight: must be contiguous")


# Decode (M <= DECODE_MAX_M) is a GEMV that only streams weights. A long K over a short N (a 7B model's
# down_proj: N = 4096, K = 11008) leaves W4A16 with few output tiles, each walking 86 K tiles in series
# (bench/quant_gemm_sweep.py, H200: 58.8 us at 0.4 TB/s). Such shapes split K across programs: each
# writes a float32 partial, summed afterwards in a fixed order (deterministic, unlike atomics). Shorter
# K gains nothing from it and pays the two extra kernels of the sum (measured: int8 and int4 7B decode
# got slower when every linear split), so only K of at least MIN_SPLIT_K_TILES tiles splits.
DECODE_MAX_M = 16
MIN_TILES_PER_SPLIT = 4
MIN_SPLIT_K_TILES = 64


@functools.cache
def multiprocessors(device: torch.device) -> int:
    """SMs of a CUDA device (1 elsewhere: the interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def split_k_for(n_tiles: int, k_tiles: int, device: torch.device) -> int:
    """The GEMVs' split rule (engine/layers/triton/split_k.py: about 4 programs per multiprocessor) with
    >= MIN_TILES_PER_SPLIT K tiles per split; 1 (no split) for K under MIN_SPLIT_K_TILES tiles."""
    if k_tiles < MIN_SPLIT_K_TILES:
        return 1
    from engine.layers.triton.split_k import split_for  # imported here: split_k imports this package

    return split_for(n_tiles, k_tiles, device, min_tiles_per_split=MIN_TILES_PER_SPLIT)


def reduce_splits(partials: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """partials: [split_k, M, N] float32 -> their sum [M, N] in dtype."""
    return partials[0].to(dtype) if partials.shape[0] == 1 else partials.sum(0).to(dtype)
