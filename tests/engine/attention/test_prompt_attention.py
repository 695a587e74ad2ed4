"""Fresh prompts' attention over their own K/V (engine/layers/attention/prompt_attention.py) against a
float64 reference: SDPA per run of equal-length prompts (CPU and CUDA), and on CUDA flash attention's
varlen kernel for steps of many runs."""
from __future__ import annotations

import math

import pytest
import torch

from tests.engine.triton_env import DEVICE  # first: it sets up Triton's interpreter without CUDA

from engine.layers.attention import prompt_attention  # noqa: E402
from engine.layers.attention.prompt_attention import (MAX_SDPA_RUNS, attends_fresh_prompts,  # noqa: E402
                                                      causal_prompt_attention, equal_length_runs)

# A one-token prompt, runs of equal lengths, one over two of the fused kernels' 64- or 128-row tiles.
LENS = (1, 7, 7, 7, 130, 33, 33)
MANY_RUNS = tuple(range(3, 3 + MAX_SDPA_RUNS + 1))
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def operands(lens: tuple[int, ...], heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, seed: int = 0):
    """q, k, v as the model slices them out of one fused projection output, and cu_seqlens."""
    g = torch.Generator().manual_seed(seed)
    tokens = sum(lens)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, generator=g).to(dtype).to(DEVICE)
    q = qkv[:, :heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim:(heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    v = qkv[:, (heads + kv_heads) * head_dim:].view(tokens, kv_heads, head_dim)
    cu_seqlens = torch.tensor([0, *lens], dtype=torch.int32).cumsum(0).int().to(DEVICE)
    return q, k, v, cu_seqlens


def reference(q, k, v, lens: tuple[int, ...], scale: float) -> torch.Tensor:
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


def check(lens, dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int, into_out: bool = False) -> None:
    assert attends_fresh_prompts(dtype, torch.device(DEVICE), head_dim)
    q, k, v, cu_seqlens = operands(lens, heads, kv_heads, head_dim, dtype, seed=heads + head_dim + len(lens))
    scale = 1 / math.sqrt(head_dim)
    out = torch.full(q.shape, float("nan"), dtype=dtype, device=DEVICE) if into_out else None
    got = causal_prompt_attention(q, k, v, lens, cu_seqlens, scale, out=out)
    if into_out:
        assert got is out
    ref = reference(q, k, v, lens, scale)
    assert got.shape == q.shape and got.dtype == dtype
    err = (got.double().cpu() - ref).abs().max().item()
    assert err <= REL_TOL[dtype] * ref.abs().max().item(), f"max difference {err}"


def test_equal_length_runs():
    assert equal_length_runs(LENS) == [(0, 1, 1), (1, 3, 7), (22, 1, 130), (152, 2, 33)]
    assert equal_length_runs((5,)) == [(0, 1, 5)]


CPU_DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float16, id="float16")]
CUDA_DTYPES = [pytest.param(torch.float16, id="float16", marks=pytest.mark.gpu),
               pytest.param(torch.bfloat16, id="bfloat16", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("dtype", CUDA_DTYPES if DEVICE == "cuda" else CPU_DTYPES)
@pytest.mark.parametrize("lens", [pytest.param(LENS, id="runs"), pytest.param((130,), id="one-run"),
                                  pytest.param(MANY_RUNS, id="many-runs")])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 4, 64), (8, 2, 128)], ids=["mha", "gqa"])
@pytest.mark.parametrize("into_out", [False, True], ids=["new", "into-out"])
def test_matches_reference(into_out, heads, kv_heads, head_dim, lens, dtype):
    check(lens, dtype, heads, kv_heads, head_dim, into_out)


@pytest.mark.gpu
def test_cuda_paths(monkeypatch):
    """Which kernel a CUDA step takes: SDPA per run where there are few runs (MHA or GQA), flash's varlen
    kernel where there are many."""
    taken = []
    for name in ("_sdpa_runs", "_flash_varlen"):
        real = getattr(prompt_attention, name)
        monkeypatch.setattr(prompt_attention, name, lambda *a, _real=real, _name=name: taken.append(_name) or _real(*a))
    for lens, kv_heads in ((LENS, 4), (MANY_RUNS, 4), (LENS, 2)):
        check(lens, torch.bfloat16, 4, kv_heads, 64)
    assert taken == ["_sdpa_runs", "_flash_varlen", "_sdpa_runs"]


@pytest.mark.gpu
def test_float32_and_odd_head_dims_stay_with_the_paged_kernels():
    cuda = torch.device("cuda")
    assert not attends_fresh_prompts(torch.float32, cuda, 64)
    assert not attends_fresh_prompts(torch.bfloat16, cuda, 68)  # the fused kernels want a multiple of 8
    assert attends_fresh_prompts(torch.bfloat16, cuda, 128)


def test_rejects_bad_inputs():
    q, k, v, cu_seqlens = operands((3, 4), 4, 2, 64, torch.float32)
    with pytest.raises(ValueError, match=r"^cu_seqlens: .*dtype"):
        causal_prompt_attention(q, k, v, (3, 4), cu_seqlens.long(), 0.125)
    with pytest.raises(ValueError, match=r"^cu_seqlens: .*one more than lens"):
        causal_prompt_attention(q, k, v, (3, 4), cu_seqlens[:2], 0.125)
    with pytest.raises(ValueError, match=r"^k: must be \[7, kv_heads dividing 4, 64\]"):
        causal_prompt_attention(q, k[:, :, :32], v, (3, 4), cu_seqlens, 0.125)
    with pytest.raises(ValueError, match=r"^k: must be \[7, kv_heads dividing 4, 64\]"):
        causal_prompt_attention(q, torch.cat([k, k[:, :1]], 1), v, (3, 4), cu_seqlens, 0.125)
    with pytest.raises(ValueError, match=r"^lens: must be positive Python ints summing to q's 7 tokens"):
        causal_prompt_attention(q, k, v, (3, 3), cu_seqlens, 0.125)
    with pytest.raises(ValueError, match=r"^out: .*shape"):
        causal_prompt_attention(q, k, v, (3, 4), cu_seqlens, 0.125, out=q[:3])
