"""Triton GEMM kernels for the weight-only formats (W8A16, W4A16): the CUDA path of their layers.
Kernel modules import triton; this one holds only the checks and launch choices they share."""
from __future__ import annotations

import functools

import torch

from engine.layers.kernel_checks import check_tensor, interpreting  # interpreting: the kernels import it from here

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_M_BUCKET = 256  # prefill sizes above this share one tuning


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


def check_int8_operands(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> None:
    """W8A16 (the GEMM and the GEMV): x [M, K], qweight int8 [N, K] contiguous, scales [N] float."""
    check_activations(x)
    check_tensor("qweight", qweight, (torch.int8,), 2, like=x)
    check_tensor("scales", scales, None, 1, like=x)
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
    check_tensor("qweight", qweight, (torch.uint8,), 2, like=x)
    check_tensor("scales", scales, None, 2, like=x)
    check_tensor("zeros", zeros, (torch.uint8,), 2, like=x)
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
