"""Unsplit decode with the keys as the dot's rows (engine/layers/attention/triton/paged_decode.py) against the
float64 reference of paged_case.py, and which kernel paged_attention gives each batch. Without CUDA it runs in
Triton's interpreter on small shapes."""
from __future__ import annotations

import pytest
import torch

from tests.engine.triton_env import DEVICE, DTYPES  # first: it sets up Triton's interpreter without CUDA

from engine.layers.attention.triton import paged_attention as paged_attention_module  # noqa: E402
from engine.layers.attention.triton.paged_attention import paged_attention  # noqa: E402
from engine.layers.quantization.triton.fp8_quant import fp8_quantize_static  # noqa: E402
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


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_kernel_quantizes_its_output_under_a_static_scale(dtype, decode_kernel):
    """out_scale (the o_proj's static fp8 input scale): the keys kernel writes e4m3 codes with the bits of
    its own output quantized by fp8_quantize_static, saturating beyond the scale's range."""
    case = fp8_case(Case(SPLIT_DECODE, 4, 2, dtype=dtype, garbage=float("nan"), seed=11), 0.3, 2.5)
    plain = run_fp8(case, 0.3, 2.5, num_splits=1)
    scale = (plain.abs().amax().float() / 448 / 2).reshape(1)  # the loudest outputs saturate
    codes = run_fp8(case, 0.3, 2.5, num_splits=1, out_scale=scale)
    assert len(decode_kernel) == 2 and codes.dtype == torch.float8_e4m3fn and codes.shape == plain.shape
    want = fp8_quantize_static(plain.view(plain.shape[0], -1), scale).view(plain.shape)
    assert torch.equal(codes.view(torch.uint8), want.view(torch.uint8))
    assert (codes.float().abs() == 448).any()


def test_a_static_out_scale_leaves_other_kernels_output_alone():
    case = Case([(3, 5), (1, 9)], 4, 2, seed=12)  # a prefill in the batch: not the keys kernel
    scale = torch.ones(1, device=DEVICE)
    out = paged_attention(*case.device_args(), case.max_query_len, case.scale, out_scale=scale)
    assert out.dtype == case.q.dtype
    assert_matches(out, case)
    with pytest.raises(ValueError, match=r"^out_scale: .*out must be None"):
        paged_attention(*case.device_args(), case.max_query_len, case.scale, out=torch.empty_like(out),
                        out_scale=scale)
    with pytest.raises(ValueError, match=r"^static_scale: "):
        paged_attention(*case.device_args(), case.max_query_len, case.scale, out_scale=torch.ones(2, device=DEVICE))


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
