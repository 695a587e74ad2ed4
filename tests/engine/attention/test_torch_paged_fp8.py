"""The portable attention backend with an fp8 (e4m3) KV cache: what it stores (x / scale, rounded to e4m3,
saturated at +-448, never NaN) and what it attends with (the dequantized cache), against float64
references. Each case is a prefill of three prompts then one decode step on a shuffled block table."""
from __future__ import annotations

import pytest
import torch

from engine.layers.attention import AttentionMetadata, TorchPagedAttention
from engine.layers.attention.kv_quant import KV_FP8, KV_FP8_MAX, quantize_kv

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 4, 2, 64, 4
PROMPTS = (5, 11, 16)  # ends inside a block, spans several, ends on a block edge
# Largest error allowed against attention over the dequantized cache, relative to the largest |output|:
# only summation order differs.
EXACT_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


class Run:
    """Prefill PROMPTS, then decode one token each, through TorchPagedAttention on a fresh cache of
    `cache_dtype`; keeps every step's q/k/v and output, and the cache. K and V are `magnitude` times
    unit normals and q 1 / magnitude times, so the scores (and the softmax's sharpness) never change."""

    def __init__(self, cache_dtype: torch.dtype, k_scale: float = 1.0, v_scale: float = 1.0,
                 magnitude: float = 1.0, q_dtype: torch.dtype = torch.float32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.k_scale, self.v_scale = k_scale, v_scale
        attn = TorchPagedAttention(HEADS, KV_HEADS, HEAD_DIM, scale=HEAD_DIM ** -0.5)
        blocks_per_seq = [-(-(n + 1) // BLOCK_SIZE) for n in PROMPTS]
        order = torch.randperm(sum(blocks_per_seq) + 2, generator=g).tolist()
        # Unused slots start as NaN (0x7f in e4m3): attention must never read them.
        self.kv_cache = torch.full((2, len(order), BLOCK_SIZE, KV_HEADS, HEAD_DIM), float("nan")).to(cache_dtype)
        tables = torch.zeros(len(PROMPTS), max(blocks_per_seq), dtype=torch.int32)
        for s, n in enumerate(blocks_per_seq):
            tables[s, :n] = torch.tensor([order.pop() for _ in range(n)], dtype=torch.int32)
        self.steps, self.slots = [], []  # (q, k, v, out) and the slot of each new token, per step
        for lens, ctx in ((PROMPTS, PROMPTS), ((1,) * len(PROMPTS), tuple(n + 1 for n in PROMPTS))):
            tokens = sum(lens)
            q = (torch.randn(tokens, HEADS, HEAD_DIM, generator=g) / magnitude).to(q_dtype)
            k = (torch.randn(tokens, KV_HEADS, HEAD_DIM, generator=g) * magnitude).to(q_dtype)
            v = (torch.randn(tokens, KV_HEADS, HEAD_DIM, generator=g) * magnitude).to(q_dtype)
            positions = [p for n, c in zip(lens, ctx) for p in range(c - n, c)]
            seq_of = [s for s, n in enumerate(lens) for _ in range(n)]
            slots = torch.tensor([int(tables[s, p // BLOCK_SIZE]) * BLOCK_SIZE + p % BLOCK_SIZE
                                  for s, p in zip(seq_of, positions)])
            meta = AttentionMetadata(slot_mapping=slots, block_tables=tables,
                                     context_lens=torch.tensor(ctx, dtype=torch.int32),
                                     query_start=torch.tensor((0, *lens), dtype=torch.int32).cumsum(0).int(),
                                     max_query_len=max(lens), max_context_len=max(ctx))
            self.steps.append((q, k, v, attn(q, k, v, self.kv_cache, meta, k_scale, v_scale)))
            self.slots.append(slots)

    def reference(self, stored=lambda k, v: (k, v)) -> list[torch.Tensor]:
        """float64 attention of each step over K/V as `stored` (k, v -> what the cache gives back)."""
        (q0, k0, v0, _), (q1, k1, v1, _) = self.steps
        starts = torch.tensor((0, *PROMPTS)).cumsum(0).tolist()
        keys = [torch.cat([k0[a:b], k1[s:s + 1]]) for s, (a, b) in enumerate(zip(starts, starts[1:]))]
        values = [torch.cat([v0[a:b], v1[s:s + 1]]) for s, (a, b) in enumerate(zip(starts, starts[1:]))]
        outs = [torch.zeros(q0.shape, dtype=torch.float64), torch.zeros(q1.shape, dtype=torch.float64)]
        for s, n in enumerate(PROMPTS):
            k, v = (t.double().repeat_interleave(HEADS // KV_HEADS, dim=1) for t in stored(keys[s], values[s]))
            prefill, decode = slice(starts[s], starts[s + 1]), slice(s, s + 1)
            for out, q, rows, first in ((outs[0], q0, prefill, 0), (outs[1], q1, decode, n)):
                scores = torch.einsum("qhd,khd->hqk", q[rows].double(), k) * HEAD_DIM ** -0.5
                q_pos = first + torch.arange(scores.shape[1])
                visible = torch.arange(k.shape[0])[None, :] <= q_pos[:, None]
                out[rows] = torch.einsum("hqk,khd->qhd", scores.masked_fill(~visible, float("-inf")).softmax(-1), v)
        return outs

    def dequantized(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k_scale, v_scale = self.k_scale, self.v_scale
        return quantize_kv(k, k_scale).double() * k_scale, quantize_kv(v, v_scale).double() * v_scale

    def outputs(self) -> list[torch.Tensor]:
        return [out for *_, out in self.steps]


def max_rel_error(outs: list[torch.Tensor], refs: list[torch.Tensor]) -> float:
    return max(((o.double() - r).abs().max() / r.abs().max()).item() for o, r in zip(outs, refs))


def rel_rms_error(outs: list[torch.Tensor], refs: list[torch.Tensor]) -> float:
    return max(((o.double() - r).norm() / r.norm()).item() for o, r in zip(outs, refs))


@pytest.mark.parametrize("q_dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("k_scale,v_scale", [(1.0, 1.0), (0.05, 0.2)])
def test_attends_over_the_dequantized_cache(k_scale, v_scale, q_dtype):
    run = Run(KV_FP8, k_scale, v_scale, magnitude=4.0, q_dtype=q_dtype)
    outs = run.outputs()
    assert all(o.dtype == q_dtype and torch.isfinite(o).all() for o in outs)  # NaN in unused slots never leaks
    assert max_rel_error(outs, run.reference(run.dequantized)) <= EXACT_TOL[q_dtype]


def test_stores_the_quantized_bytes():
    run = Run(KV_FP8, 0.25, 0.5)
    for (_, k, v, _), slots in zip(run.steps, run.slots):
        for which, x, scale in ((0, k, 0.25), (1, v, 0.5)):
            stored = run.kv_cache[which].view(-1, KV_HEADS, HEAD_DIM)[slots]
            assert torch.equal(stored.view(torch.uint8), quantize_kv(x, scale).view(torch.uint8))
    (_, k0, _, _), _ = run.steps
    # k / scale rounded to the nearest e4m3 value: with 3 mantissa bits that is within 2^-4 of it relatively,
    # above e4m3's smallest normal (2^-6); below it the step is a fixed 2^-9, so within 2^-10 absolutely.
    back = quantize_kv(k0, 0.25).float() * 0.25
    assert ((back - k0).abs() <= torch.maximum(k0.abs() * 2 ** -4, torch.tensor(2 ** -10 * 0.25))).all()


@pytest.mark.parametrize("magnitude,calibrated", [(1.0, False), (1e3, True), (1e-3, True)],
                         ids=["unit-values", "large-values-calibrated", "tiny-values-calibrated"])
def test_close_to_the_unquantized_cache(magnitude, calibrated):
    """Quality, not exactness: against the same steps on a float32 cache. Large values need a scale not to
    saturate, tiny ones not to fall below e4m3's normal range (2^-6) and lose mantissa bits.

    Each cached element is off by at most 2^-4 relatively (half an ulp of 3 mantissa bits), about
    2^-4 / sqrt(3) = 3.6% RMS, and the output's relative RMS error is about that: measured over 10 seeds,
    3.0-3.7% in all three cases (the largest single error, 3.4-6.1% of the largest |output| over 5 seeds,
    is too noisy to gate on). 5% leaves margin; without the scales the large and tiny cases are off by
    64-83%."""
    ref = Run(torch.float32, magnitude=magnitude)
    keys = torch.cat([k for _, k, _, _ in ref.steps])
    values = torch.cat([v for _, _, v, _ in ref.steps])
    # Per-tensor calibration as llm-compressor does it: amax / 448 maps the largest value to e4m3's largest.
    k_scale = keys.abs().max().item() / KV_FP8_MAX if calibrated else 1.0
    v_scale = values.abs().max().item() / KV_FP8_MAX if calibrated else 1.0
    fp8 = Run(KV_FP8, k_scale, v_scale, magnitude=magnitude)
    assert rel_rms_error(fp8.outputs(), [o.double() for o in ref.outputs()]) <= 0.05


def test_out_of_range_values_saturate_instead_of_becoming_nan():
    run = Run(KV_FP8, magnitude=1000.0)  # scale 1.0: two thirds of the values are past 448
    (_, k0, _, _), _ = run.steps
    assert (k0.abs() > KV_FP8_MAX).float().mean() > 0.5
    for slots in run.slots:  # the slots written (the others still hold the NaN they started with)
        written = run.kv_cache.view(2, -1, KV_HEADS, HEAD_DIM)[:, slots].float()
        assert torch.isfinite(written).all() and written.abs().max() == KV_FP8_MAX
    outs = run.outputs()
    assert all(torch.isfinite(o).all() for o in outs)
    clamped = lambda k, v: run.dequantized(k.clamp(-KV_FP8_MAX, KV_FP8_MAX), v.clamp(-KV_FP8_MAX, KV_FP8_MAX))
    assert max_rel_error(outs, run.reference(clamped)) <= EXACT_TOL[torch.float32]


def test_quantize_kv_saturates_and_keeps_representable_values():
    x = torch.tensor([0.0, -0.0, 1.0, -1.75, 448.0, 449.0, 1e4, -1e30, 2 ** -9, 0.3])
    q = quantize_kv(x, 1.0)
    assert q.dtype == KV_FP8
    assert q.float().tolist()[:9] == [0.0, 0.0, 1.0, -1.75, 448.0, 448.0, 448.0, -448.0, 2 ** -9]
    assert abs(q.float()[9].item() - 0.3) <= 0.3 * 2 ** -4
    assert torch.equal(quantize_kv(x * 0.5, 0.5).view(torch.uint8), q.view(torch.uint8))  # x / scale


def test_scales_are_checked():
    attn = TorchPagedAttention(HEADS, KV_HEADS, HEAD_DIM, scale=0.125)
    q, k = torch.zeros(1, HEADS, HEAD_DIM), torch.zeros(1, KV_HEADS, HEAD_DIM)
    meta = AttentionMetadata.prefill(torch.zeros(1, 1, dtype=torch.int32), 1, BLOCK_SIZE)
    cache = torch.zeros(2, 1, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    with pytest.raises(ValueError, match=r"^k_scale: only an fp8 .* cache is scaled"):
        attn(q, k, k, cache, meta, 2.0, 1.0)  # a float32 cache holds K as it is
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^v_scale: must be finite and > 0"):
            attn(q, k, k, cache.to(KV_FP8), meta, 1.0, bad)
    with pytest.raises(ValueError, match=r"^k_scale: must be a Python float"):
        attn(q, k, k, cache.to(KV_FP8), meta, torch.tensor(1.0), 1.0)
