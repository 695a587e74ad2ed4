"""Causal attention of fresh prompts (metadata.FreshPrompts): sequences whose caches held nothing before
this step, so their keys and values are this step's own k and v, contiguous in the flattened batch, and
need no block table.

On CUDA, in fp16 or bf16, that is flash attention's varlen kernel (torch.nn.attention.varlen): about
twice the FLOP rate of the paged Triton kernel on a long prompt (docs/benchmarks.md, session 18), which
must gather every key tile through the block table. Elsewhere, scaled-dot-product attention one sequence
at a time: the stand-in that lets the Triton backend's composition run in the interpreter tests.

The prompt attends its own K/V as the projections made them: over an fp8 cache, its unquantized keys
and values, where the paged kernels would read them back rounded to e4m3 (later steps do).
"""
from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

from engine.layers.kernel_checks import check_last_dim_contiguous, check_shape, check_tensor

FLASH_DTYPES = (torch.float16, torch.bfloat16)
FLASH_MAX_HEAD_DIM = 256
FLASH_MIN_CAPABILITY = (8, 0)


def fresh_attention_kind(dtype: torch.dtype, device: torch.device, head_dim: int) -> str | None:
    """Which implementation attends fresh prompts here: "flash" (CUDA), "sdpa" (CPU), or None where
    neither is used (float32 on CUDA, a head_dim flash does not take: the paged kernels do it all)."""
    if device.type == "cpu":
        return "sdpa"
    if (device.type == "cuda" and dtype in FLASH_DTYPES and head_dim % 8 == 0 and head_dim <= FLASH_MAX_HEAD_DIM
            and torch.cuda.get_device_capability(device) >= FLASH_MIN_CAPABILITY and _varlen_attn() is not None):
        return "flash"
    return None


def causal_varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                            max_len: int, scale: float, kind: str) -> torch.Tensor:
    """Each sequence's queries over its own keys, causally. q: [tokens, heads, head_dim]; k, v: [tokens,
    kv_heads, head_dim] (kv_heads divides heads; any token and head strides, last dim contiguous);
    cu_seqlens: [seqs + 1] int32, 0 first and tokens last, sequence s being rows cu_seqlens[s] ..
    cu_seqlens[s + 1] - 1; max_len: at least the longest sequence (a Python int: no device sync).
    kind: fresh_attention_kind's answer. Returns [tokens, heads, head_dim] in q's dtype."""
    check_tensor("q", q, (torch.float16, torch.bfloat16, torch.float32), 3)
    tokens, heads, head_dim = q.shape
    for name, t in (("k", k), ("v", v)):
        check_tensor(name, t, (q.dtype,), 3, like=q)
        if t.shape[0] != tokens or t.shape[2] != head_dim or t.shape[1] == 0 or heads % t.shape[1]:
            raise ValueError(f"{name}: must be [{tokens}, kv_heads dividing {heads}, {head_dim}], got {tuple(t.shape)}")
    check_shape("v", v, tuple(k.shape), "k's shape")
    check_tensor("cu_seqlens", cu_seqlens, (torch.int32,), 1, like=q)
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_last_dim_contiguous(name, t)
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 0:
        raise ValueError(f"max_len: must be a non-negative Python int, got {max_len!r}")
    if kind not in VARLEN_ATTENTION:
        raise ValueError(f"kind: must be one of {sorted(VARLEN_ATTENTION)}, got {kind!r}")
    return VARLEN_ATTENTION[kind](q, k, v, cu_seqlens, max_len, float(scale))


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int,
           scale: float) -> torch.Tensor:
    varlen_attn = _varlen_attn()
    if varlen_attn is None:
        raise RuntimeError("torch.nn.attention.varlen.varlen_attn is not in this torch build")
    kwargs = dict(_flash_options(varlen_attn, gqa=k.shape[1] != q.shape[1]))
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, scale=scale, **kwargs)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int,
          scale: float) -> torch.Tensor:
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        # [1, heads, len, head_dim] each
        qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale,
                                           enable_gqa=k.shape[1] != q.shape[1])
        out[start:end] = o[0].transpose(0, 1)
    return out


VARLEN_ATTENTION = {"flash": _flash, "sdpa": _sdpa}


@functools.cache
def _varlen_attn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.10
        return None
    return varlen_attn


@functools.cache
def _flash_options(varlen_attn, gqa: bool) -> tuple[tuple[str, object], ...]:
    # torch 2.10 took is_causal; 2.11 on take a (left, right) window, (-1, 0) being causal. GQA needs
    # enable_gqa where the function has it (flash's kernel takes fewer KV heads either way).
    params = inspect.signature(varlen_attn).parameters
    options: list[tuple[str, object]] = [("window_size", (-1, 0)) if "window_size" in params else ("is_causal", True)]
    if gqa and "enable_gqa" in params:
        options.append(("enable_gqa", True))
    return tuple(options)
