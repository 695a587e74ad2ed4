"""The two attention backends on an fp8 (e4m3) KV pool: the Triton backend stores exactly the bytes the
torch backend stores and attends to the torch backend's output, over a prefill step, a step mixing
decodes with a prompt chunk, then a decode-only step (which the Triton backend runs with each sequence's
keys split over several programs, paged_attention_split.py).

On CPU (Triton's interpreter) K and V are e4m3 values times power-of-two scales, plus values far past the
range, since the interpreter's float32 -> e4m3 cast does not round to nearest even (fp8.py); on CUDA they
are random and the scales arbitrary."""
from __future__ import annotations

import pytest
import torch

from tests.engine.triton_env import DEVICE, DTYPES  # first: it sets up Triton's interpreter without CUDA

from engine.layers.attention import AttentionMetadata, TorchPagedAttention, TritonPagedAttention  # noqa: E402
from engine.layers.attention.kv_quant import KV_FP8, KV_FP8_MAX  # noqa: E402
from engine.layers.attention.triton.paged_attention import decode_splits, multiprocessors  # noqa: E402
from tests.engine.attention.fp8 import e4m3_values  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 8, 2, 64, 4
# (query lens, context lens) per step: three prompts, then two decodes and a 6-token chunk of the third,
# then three decodes.
STEPS = [((5, 11, 10), (5, 11, 10)), ((1, 1, 6), (6, 12, 16)), ((1, 1, 1), (7, 13, 17))]
# Largest difference allowed, relative to the largest |output|: twice the kernel's own tolerance against
# a float64 reference (test_triton_paged_attention.py), as both sides now carry rounding of their dtype.
REL_TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def metadata(lens: tuple[int, ...], ctx: tuple[int, ...], tables: torch.Tensor) -> AttentionMetadata:
    slots = [int(tables[s, p // BLOCK_SIZE]) * BLOCK_SIZE + p % BLOCK_SIZE
             for s, (n, c) in enumerate(zip(lens, ctx)) for p in range(c - n, c)]
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots, device=DEVICE), block_tables=tables.to(DEVICE),
        context_lens=torch.tensor(ctx, dtype=torch.int32, device=DEVICE),
        query_start=torch.tensor((0, *lens), dtype=torch.int32).cumsum(0).int().to(DEVICE),
        max_query_len=max(lens), max_context_len=max(ctx))


def compare(dtype: torch.dtype, k_scale: float, v_scale: float, exact: bool, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    blocks = [-(-c // BLOCK_SIZE) for c in STEPS[-1][1]]
    order = torch.randperm(sum(blocks) + 2, generator=g).tolist()
    tables = torch.zeros(len(blocks), max(blocks), dtype=torch.int32)
    for s, n in enumerate(blocks):
        tables[s, :n] = torch.tensor([order.pop() for _ in range(n)], dtype=torch.int32)
    # Unused slots hold NaN (0x7f): neither backend may read them.
    pools = [torch.full((2, sum(blocks) + 2, BLOCK_SIZE, KV_HEADS, HEAD_DIM), float("nan")).to(KV_FP8).to(DEVICE)
             for _ in range(2)]
    backends = [TorchPagedAttention(HEADS, KV_HEADS, HEAD_DIM, HEAD_DIM ** -0.5),
                TritonPagedAttention(HEADS, KV_HEADS, HEAD_DIM, HEAD_DIM ** -0.5)]
    for lens, ctx in STEPS:
        tokens = sum(lens)
        # K / k_scale reaches 448: q this small keeps the scores to a few units (a softmax, not an argmax).
        q = torch.randn(tokens, HEADS, HEAD_DIM, generator=g) * 4 / (KV_FP8_MAX * k_scale)
        if exact:
            k = e4m3_values((tokens, KV_HEADS, HEAD_DIM), k_scale, g)
            v = e4m3_values((tokens, KV_HEADS, HEAD_DIM), v_scale, g)
        else:  # ~2% of them past the range
            k = torch.randn(tokens, KV_HEADS, HEAD_DIM, generator=g) * 200 * k_scale
            v = torch.randn(tokens, KV_HEADS, HEAD_DIM, generator=g) * 200 * v_scale
        q, k, v = (t.to(dtype).to(DEVICE) for t in (q, k, v))
        meta = metadata(lens, ctx, tables)
        ref, out = (backend(q, k, v, pool, meta, k_scale, v_scale) for backend, pool in zip(backends, pools))
        assert torch.equal(pools[0].cpu().view(torch.uint8), pools[1].cpu().view(torch.uint8))
        assert out.dtype == dtype and torch.isfinite(out).all()
        err = (out.double() - ref.double()).abs().max().item()
        assert err <= REL_TOL[dtype] * ref.double().abs().max().item(), f"max difference {err}"


def test_the_decode_step_splits():
    """The last step is what the comparisons below rely on to cover the split kernels over an fp8 pool."""
    lens, _ = STEPS[-1]
    assert max(lens) == 1 and decode_splits(len(lens), KV_HEADS, multiprocessors(torch.device(DEVICE))) > 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k_scale,v_scale", [(1.0, 1.0), (0.125, 2.0)])
def test_backends_agree_on_an_fp8_pool(k_scale, v_scale, dtype):
    compare(dtype, k_scale, v_scale, exact=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_backends_agree_on_random_values(dtype):
    compare(dtype, 0.037, 0.011, exact=False, seed=1)
