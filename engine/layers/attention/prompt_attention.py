"""Causal attention of fresh prompts (metadata.FreshPrompts): sequences whose caches held nothing before
this step, so their keys and values are this step's own k and v, contiguous in the flattened batch, and
need no block table.

Each run of consecutive prompts of one length (a batch of fixed-length requests is one run) is one call of
torch's scaled_dot_product_attention on [prompts, heads, length, head_dim] views, which on an H100 takes
cuDNN's fused attention: one layer of 4 x 2,048 tokens of a 7B model in 263 us (522 TFLOP/s), where the
paged Triton kernel, which must gather every key tile through the block table, takes 596 and flash
attention 2's varlen kernel 500; with GQA (enable_gqa, 8 KV heads) the same 264 us (docs/benchmarks.md,
session 18). On CUDA a step of more runs than MAX_SDPA_RUNS (each call costs host time) takes flash
attention's varlen kernel instead: one launch for any mix of lengths (torch.nn.attention.varlen). On CPU
every run goes through SDPA, the stand-in that lets the Triton backend's composition run in the
interpreter tests.

The prompt attends its own K/V as the projections made them: over an fp8 cache, its unquantized keys
and values, where the paged kernels would read them back rounded to e4m3 (later steps do).
"""
from __future__ import annotations

import functools
import inspect
from typing import Final

import torch
import torch.nn.functional as F

from engine.layers.kernel_checks import check_last_dim_contiguous, check_shape, check_tensor

CUDA_DTYPES = (torch.float16, torch.bfloat16)
MAX_HEAD_DIM: Final[int] = 256  # flash attention's and cuDNN's limit
MIN_CAPABILITY = (8, 0)
# More runs of equal-length prompts than this in one step take the one varlen launch (CUDA): each SDPA call
# costs ~20-50 us of host time, which a long prompt's attention hides and a few short ones do not.
MAX_SDPA_RUNS: Final[int] = 4


@functools.cache  # asked by every layer of every prefill step
def attends_fresh_prompts(dtype: torch.dtype, device: torch.device, head_dim: int) -> bool:
    """Whether fresh prompts of this dtype and head_dim are attended here (causal_prompt_attention) rather
    than by the paged kernels: on CPU always, on CUDA in fp16 / bf16 with a head_dim the fused kernels take
    (float32 keeps the paged kernels, as the exactness tests against the CPU engine expect)."""
    if device.type == "cpu":
        return True
    return (device.type == "cuda" and dtype in CUDA_DTYPES and head_dim % 8 == 0 and head_dim <= MAX_HEAD_DIM
            and torch.cuda.get_device_capability(device) >= MIN_CAPABILITY)


def causal_prompt_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: tuple[int, ...],
                            cu_seqlens: torch.Tensor, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Each prompt's queries over its own keys, causally. q: [tokens, heads, head_dim]; k, v: [tokens,
    kv_heads, head_dim] (kv_heads divides heads; any token and head strides, last dim contiguous); lens:
    each prompt's tokens, in order, summing to tokens (host ints); cu_seqlens: the same as [prompts + 1]
    int32 offsets from 0, on q's device. Returns out ([tokens, heads, head_dim] in q's dtype, new unless
    given)."""
    check_tensor("q", q, (torch.float16, torch.bfloat16, torch.float32), 3)
    tokens, heads, head_dim = q.shape
    for name, t in (("k", k), ("v", v)):
        check_tensor(name, t, (q.dtype,), 3, like=q)
        if t.shape[0] != tokens or t.shape[2] != head_dim or t.shape[1] == 0 or heads % t.shape[1]:
            raise ValueError(f"{name}: must be [{tokens}, kv_heads dividing {heads}, {head_dim}], got {tuple(t.shape)}")
    check_shape("v", v, tuple(k.shape), "k's shape")
    check_tensor("cu_seqlens", cu_seqlens, (torch.int32,), 1, like=q)
    check_shape("cu_seqlens", cu_seqlens, (len(lens) + 1,), "one more than lens")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_last_dim_contiguous(name, t)
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lens) or sum(lens) != tokens:
        raise ValueError(f"lens: must be positive Python ints summing to q's {tokens} tokens, got {lens!r}")
    if out is not None:
        check_tensor("out", out, (q.dtype,), 3, like=q)
        check_shape("out", out, tuple(q.shape), "q's shape")
    runs = equal_length_runs(lens)
    flash = q.device.type == "cuda" and len(runs) > MAX_SDPA_RUNS
    return (_flash_varlen if flash else _sdpa_runs)(q, k, v, runs, cu_seqlens, float(scale), out)


def equal_length_runs(lens: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(first token, prompts, length) of each run of consecutive prompts of one length."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for n in lens:
        if runs and runs[-1][2] == n:
            first, count, _ = runs[-1]
            runs[-1] = (first, count + 1, n)
        else:
            runs.append((start, 1, n))
        start += n
    return runs


def _sdpa_runs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, runs: list[tuple[int, int, int]],
               cu_seqlens: torch.Tensor, scale: float, out: torch.Tensor | None) -> torch.Tensor:
    gqa = k.shape[1] != q.shape[1]
    for first, count, length in runs:
        rows = slice(first, first + count * length)
        # [count, heads, length, head_dim] views of the flat [tokens, heads, head_dim] rows
        qs, ks, vs = (t[rows].unflatten(0, (count, length)).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=gqa)
        o = o.transpose(1, 2).flatten(0, 1)  # [count * length, heads, head_dim]
        if out is None and len(runs) == 1:
            return o
        if out is None:
            out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        out[rows] = o
    return out


def _flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, runs: list[tuple[int, int, int]],
                  cu_seqlens: torch.Tensor, scale: float, out: torch.Tensor | None) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn  # torch >= 2.10

    max_len = max(length for _, _, length in runs)
    o = varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, scale=scale, **_causal_option(varlen_attn))
    if out is None:
        return o
    out.copy_(o)
    return out


@functools.cache
def _causal_option(varlen_attn) -> dict[str, object]:
    # torch 2.10 took is_causal; 2.11 on take a (left, right) window, (-1, 0) being causal. 2.11's has no
    # enable_gqa and its kernel takes fewer KV heads than query heads as they are (checked on an H100);
    # later versions ask for enable_gqa.
    params = inspect.signature(varlen_attn).parameters
    causal: dict[str, object] = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if "enable_gqa" in params:
        causal["enable_gqa"] = True
    return causal
