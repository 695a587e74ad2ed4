"""The Triton backend attends a step's fresh prompts (AttentionMetadata.fresh) over their own K/V
(prompt_attention.py) and the rest of the batch with the paged kernels: the same cache bytes as when it is not told
of them, and within rounding the same output as the torch backend, which knows nothing of fresh prompts,
over three steps with RoPE: prompts alone, then decodes, a prompt's later chunk and a new prompt, then a
new prompt alone again.

On CPU the fresh prompts go through SDPA and the paged kernels run in Triton's interpreter; on CUDA the
fused kernels take them in fp16 and bf16 (float32 keeps the paged kernels for all)."""
from __future__ import annotations

import pytest
import torch

from tests.engine.triton_env import DEVICE, DTYPES  # first: it sets up Triton's interpreter without CUDA

from engine.layers.attention import AttentionMetadata, FreshPrompts, TorchPagedAttention, TritonPagedAttention  # noqa: E402,E501
from engine.layers.attention.kv_quant import KV_FP8  # noqa: E402
from engine.layers.rotary import RotaryEmbedding  # noqa: E402

HEADS, HEAD_DIM, BLOCK_SIZE = 8, 64, 4
# Per step, each sequence's (new tokens, context after the step); 0 new tokens: not in this step.
# Sequence 2's prompt comes in two chunks (10, then 6); sequence 3 is new in step 2, sequence 4 in step 3.
STEPS = [
    [(5, 5), (11, 11), (10, 10), (0, 0), (0, 0)],
    [(1, 6), (1, 12), (6, 16), (9, 9), (0, 0)],
    [(0, 0), (0, 0), (0, 0), (0, 0), (13, 13)],
]
FRESH = [FreshPrompts(0, (5, 11, 10)), FreshPrompts(8, (9,)), FreshPrompts(0, (13,))]
REL_TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def tables(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    blocks = [-(-max(c for _, c in (step[s] for step in STEPS)) // BLOCK_SIZE) for s in range(len(STEPS[0]))]
    order = torch.randperm(sum(blocks) + 2, generator=g).tolist()
    out = torch.zeros(len(blocks), max(blocks), dtype=torch.int32)
    for s, n in enumerate(blocks):
        out[s, :n] = torch.tensor([order.pop() for _ in range(n)], dtype=torch.int32)
    return out


def metadata(step: list[tuple[int, int]], all_tables: torch.Tensor, fresh: FreshPrompts | None) -> AttentionMetadata:
    rows = [s for s, (n, _) in enumerate(step) if n]
    lens, ctx = [step[s][0] for s in rows], [step[s][1] for s in rows]
    slots = [int(all_tables[s, p // BLOCK_SIZE]) * BLOCK_SIZE + p % BLOCK_SIZE
             for s, n, c in zip(rows, lens, ctx) for p in range(c - n, c)]
    leading = next((i for i, n in enumerate(lens) if n != 1), len(lens))
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots, device=DEVICE), block_tables=all_tables[rows].to(DEVICE),
        context_lens=torch.tensor(ctx, dtype=torch.int32, device=DEVICE),
        query_start=torch.tensor((0, *lens), dtype=torch.int32).cumsum(0).int().to(DEVICE),
        max_query_len=max(lens), max_context_len=max(ctx), leading_decodes=leading, fresh=fresh)


def run(dtype: torch.dtype, cache_dtype: torch.dtype, kv_heads: int, k_scale: float = 1.0, v_scale: float = 1.0,
        seed: int = 0):
    """Per step, (outputs, pools) of: the torch backend, the Triton one told of the fresh prompts, the Triton
    one not told, and the torch backend over a pool in the model's dtype (what a fresh prompt attends)."""
    g = torch.Generator().manual_seed(seed)
    all_tables = tables(seed)
    rotary = RotaryEmbedding(HEAD_DIM, 64, 10000.0, None).to(DEVICE)
    num_blocks = int(all_tables.max()) + 3
    # Unused slots hold NaN: no backend may read them.
    pools = [torch.full((2, num_blocks, BLOCK_SIZE, kv_heads, HEAD_DIM), float("nan")).to(d).to(DEVICE)
             for d in (cache_dtype, cache_dtype, cache_dtype, dtype)]
    torch_backend = TorchPagedAttention(HEADS, kv_heads, HEAD_DIM, HEAD_DIM ** -0.5)
    triton_backend = TritonPagedAttention(HEADS, kv_heads, HEAD_DIM, HEAD_DIM ** -0.5)
    backends = [torch_backend, triton_backend, triton_backend, torch_backend]
    scales = [(k_scale, v_scale)] * 3 + [(1.0, 1.0)]
    results = []
    for step, fresh in zip(STEPS, FRESH):
        metas = [metadata(step, all_tables, f) for f in (None, fresh, None, None)]
        positions = torch.tensor([p for n, c in step if n for p in range(c - n, c)], device=DEVICE)
        tokens = len(positions)
        qkv = torch.randn(tokens, (HEADS + 2 * kv_heads) * HEAD_DIM, generator=g).to(dtype).to(DEVICE)
        outs = []
        for backend, pool, meta, (ks, vs) in zip(backends, pools, metas, scales):
            x = qkv.clone()  # each backend rotates its own q and k in place
            q = x[:, :HEADS * HEAD_DIM].view(tokens, HEADS, HEAD_DIM)
            k = x[:, HEADS * HEAD_DIM:(HEADS + kv_heads) * HEAD_DIM].view(tokens, kv_heads, HEAD_DIM)
            v = x[:, (HEADS + kv_heads) * HEAD_DIM:].view(tokens, kv_heads, HEAD_DIM)
            outs.append(backend(q, k, v, pool, meta, ks, vs, rotary=rotary, positions=positions))
        results.append((outs, [p.clone() for p in pools]))
    return results


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))  # NaN slots included


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.dtype == ref.dtype and out.shape == ref.shape and torch.isfinite(out).all()
    err = (out.double() - ref.double()).abs().max().item()
    assert err <= REL_TOL[dtype] * ref.double().abs().max().item(), f"max difference {err}"


KV_HEADS = [pytest.param(8, id="mha"), pytest.param(2, id="gqa")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kv_heads", KV_HEADS)
def test_fresh_prompts_apart_match_the_torch_backend(kv_heads, dtype):
    for (ref, out, paged, _), pools in run(dtype, dtype, kv_heads):
        assert same_bytes(pools[1], pools[2])  # NaN slots untouched
        assert_close(out, ref, dtype)
        assert_close(out, paged, dtype)


@pytest.mark.gpu  # e4m3 casts need sm_89+ (the interpreter's differ from the GPU's)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kv_heads", KV_HEADS)
def test_fresh_prompts_over_an_fp8_pool_attend_their_unquantized_keys(kv_heads, dtype):
    for fresh, ((ref, out, _, unquantized), pools) in zip(FRESH, run(dtype, KV_FP8, kv_heads, 0.05, 0.03, seed=1)):
        assert same_bytes(pools[1], pools[2])
        t0 = fresh.first_token
        if t0:
            assert_close(out[:t0], ref[:t0], dtype)  # the rest of the batch reads the fp8 cache
        assert_close(out[t0:], unquantized[t0:], dtype)
