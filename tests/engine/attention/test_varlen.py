"""Fresh prompts' attention over their own K/V (engine/layers/attention/varlen.py) against a float64
reference: scaled-dot-product attention per sequence on CPU, flash attention's varlen kernel on CUDA."""
from __future__ import annotations

import math

import pytest
import torch

from tests.engine.triton_env import DEVICE  # first: it sets up Triton's interpreter without CUDA

from engine.layers.attention.varlen import causal_varlen_attention, fresh_attention_kind  # noqa: E402

LENS = [1, 7, 130, 33]  # a one-token prompt, one over two of flash's 64- or 128-row tiles
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def operands(lens: list[int], heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, seed: int = 0):
    """q, k, v as the model slices them out of one fused projection output, and cu_seqlens."""
    g = torch.Generator().manual_seed(seed)
    tokens = sum(lens)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, generator=g).to(dtype).to(DEVICE)
    q = qkv[:, :heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim:(heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    v = qkv[:, (heads + kv_heads) * head_dim:].view(tokens, kv_heads, head_dim)
    cu_seqlens = torch.tensor([0, *lens], dtype=torch.int32).cumsum(0).int().to(DEVICE)
    return q, k, v, cu_seqlens


def reference(q, k, v, lens: list[int], scale: float) -> torch.Tensor:
    group = q.shape[1] // k.shape[1]
    out, start = [], 0
    for n in lens:
        qs, ks, vs = (t[start:start + n].double().cpu() for t in (q, k, v))
        ks, vs = ks.repeat_interleave(group, 1), vs.repeat_interleave(group, 1)
        scores = torch.einsum("qhd,khd->hqk", qs, ks) * scale
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        out.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), vs))
        start += n
    return torch.cat(out)


def check(dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int) -> None:
    kind = fresh_attention_kind(dtype, torch.device(DEVICE), head_dim)
    assert kind == ("flash" if DEVICE == "cuda" else "sdpa")
    q, k, v, cu_seqlens = operands(LENS, heads, kv_heads, head_dim, dtype, seed=heads + head_dim)
    scale = 1 / math.sqrt(head_dim)
    out = causal_varlen_attention(q, k, v, cu_seqlens, max(LENS), scale, kind)
    ref = reference(q, k, v, LENS, scale)
    assert out.shape == q.shape and out.dtype == dtype
    err = (out.double().cpu() - ref).abs().max().item()
    assert err <= REL_TOL[dtype] * ref.abs().max().item(), f"max difference {err}"


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_sdpa_matches_reference(heads, kv_heads, dtype):
    if DEVICE == "cuda":
        pytest.skip("CUDA takes flash attention (test_flash_matches_reference)")
    check(dtype, heads, kv_heads, 64)


@pytest.mark.gpu
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 4, 64), (8, 2, 128), (32, 8, 128)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_flash_matches_reference(heads, kv_heads, head_dim, dtype):
    check(dtype, heads, kv_heads, head_dim)


@pytest.mark.gpu
def test_float32_and_odd_head_dims_stay_with_the_paged_kernels():
    cuda = torch.device("cuda")
    assert fresh_attention_kind(torch.float32, cuda, 64) is None
    assert fresh_attention_kind(torch.bfloat16, cuda, 68) is None  # flash wants a multiple of 8
    assert fresh_attention_kind(torch.bfloat16, cuda, 128) == "flash"


def test_rejects_bad_inputs():
    q, k, v, cu_seqlens = operands([3, 4], 4, 2, 64, torch.float32)
    kind = fresh_attention_kind(torch.float32, torch.device(DEVICE), 64) or "sdpa"
    with pytest.raises(ValueError, match=r"^cu_seqlens: .*dtype"):
        causal_varlen_attention(q, k, v, cu_seqlens.long(), 4, 0.125, kind)
    with pytest.raises(ValueError, match=r"^k: must be \[7, kv_heads dividing 4, 64\]"):
        causal_varlen_attention(q, k[:, :, :32], v, cu_seqlens, 4, 0.125, kind)
    with pytest.raises(ValueError, match=r"^k: must be \[7, kv_heads dividing 4, 64\]"):
        causal_varlen_attention(q, torch.cat([k, k[:, :1]], 1), v, cu_seqlens, 4, 0.125, kind)
    with pytest.raises(ValueError, match=r"^max_len: must be a non-negative Python int"):
        causal_varlen_attention(q, k, v, cu_seqlens, torch.tensor(4), 0.125, kind)
    with pytest.raises(ValueError, match=r"^kind: must be one of \['flash', 'sdpa'\], got 'paged'"):
        causal_varlen_attention(q, k, v, cu_seqlens, 4, 0.125, "paged")
