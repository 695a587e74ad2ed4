"""Unsplit decode with the keys as the dot's rows (engine/layers/attention/triton/paged_decode.py) against the
float64 reference of paged_case.py, and which kernel paged_attention gives each batch. Without CUDA it runs in
Triton's interpreter on small shapes."""
from __future__ import annotations

import pytest
import torch

from tests.engine.triton_env import DEVICE, DTYPES  # first: it sets up Triton's interpreter without CUDA

from engine.layers.attention.triton import paged_attention as paged_attention_module  # noqa: E402
from tests.engine.attention.paged_case import (HEADS, PADDING_ROW, SPLIT_DECODE, Case, assert_matches,  # noqa: E402
                                               fp8_case, run_fp8)


@pytest.fixture
def decode_kernel(monkeypatch) -> list[str]:
    """Every cache kind takes the keys-as-rows kernel; the list records its launches."""
    monkeypatch.setitem(paged_attention_module.DECODE_KERNEL, "model_dtype", "keys")
    monkeypatch.setitem(paged_attention_module.DECODE_KERNEL, "fp8", "keys")
    launches = []
    original = paged_attention_module.launch_decode_by_rows

    def spy(*args, **kwargs):
        launches.append("keys")
        original(*args, **kwargs)

    monkeypatch.setattr(paged_attention_module, "launch_decode_by_rows", spy)
    return launches


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads", HEADS)
def test_decode_kernel_matches_reference(heads, kv_heads, dtype, decode_kernel):
    """Contexts inside one key tile, across several, none (padding: zeros) and a sequence with no query."""
    case = Case(SPLIT_DECODE, heads, kv_heads, dtype=dtype, garbage=float("nan"), seed=heads * kv_heads)
    out = case.run(num_splits=1)
    assert len(decode_kernel) == 1
    assert_matches(out, case)
    assert (out[PADDING_ROW] == 0).all()


def test_decode_kernel_writes_only_its_rows(decode_kernel):
    case = Case(SPLIT_DECODE, 4, 2, garbage=float("nan"), seed=4)
    wide = torch.full((case.q.shape[0], 4, 80), float("nan"), device=DEVICE)
    out = wide[..., :64]
    assert case.run(out=out, num_splits=1) is out and len(decode_kernel) == 1
    assert_matches(out, case)
    assert torch.isnan(wide[..., 64:]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads", HEADS)
def test_decode_kernel_over_an_fp8_cache(heads, kv_heads, dtype, decode_kernel):
    """k_scale folded into the scores, v_scale onto the output, NaN in unowned slots never read."""
    case = fp8_case(Case(SPLIT_DECODE, heads, kv_heads, dtype=dtype, garbage=float("nan"), seed=7), 0.3, 2.5)
    out = run_fp8(case, 0.3, 2.5, num_splits=1)
    assert len(decode_kernel) == 1
    assert_matches(out, case)


def test_which_kernel_a_batch_takes(monkeypatch):
    kernel_of = paged_attention_module.decode_kernel
    monkeypatch.setitem(paged_attention_module.DECODE_KERNEL, "fp8", "keys")
    assert kernel_of(1, fp8_cache=True, splits=1) == "keys"
    assert kernel_of(1, fp8_cache=True, splits=2) == "split"
    assert kernel_of(2, fp8_cache=True, splits=1) == "prefill"  # a prompt in the batch
    assert kernel_of(1, fp8_cache=False, splits=1) == paged_attention_module.DECODE_KERNEL["model_dtype"]


@pytest.mark.gpu
@pytest.mark.parametrize("fp8", [False, True], ids=["model_dtype_cache", "fp8_cache"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_decode_kernel_7b_shapes(dtype, fp8, decode_kernel):
    """Batches too large to split, with the 7B's tiles: MHA and GQA, contexts across several key tiles."""
    gen = torch.Generator().manual_seed(0)
    seqs = [(1, int(c)) for c in torch.randint(1, 700, (72,), generator=gen)] + [(1, 0)]
    for kv_heads in (32, 8):
        case = Case(seqs, 32, kv_heads, head_dim=128, block_size=16, dtype=dtype, garbage=float("nan"))
        out = run_fp8(fp8_case(case, 0.02, 0.01), 0.02, 0.01) if fp8 else case.run()
        assert_matches(out, case)
    assert len(decode_kernel) == 2
