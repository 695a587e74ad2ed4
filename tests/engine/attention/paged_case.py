"""Paged-attention test batches shared by the Triton kernels' tests: a batch of sequences with its K/V in a
shuffled paged cache (garbage, NaN where asked, in the slots no sequence owns), its float64 reference, and
the same batch over an fp8 (e4m3) cache."""
from __future__ import annotations

import math

import pytest
import torch

from tests.engine.triton_env import DEVICE  # first: it sets up Triton's interpreter without CUDA

from engine.layers.attention.kv_quant import quantize_kv  # noqa: E402
from engine.layers.attention.triton.paged_attention import paged_attention  # noqa: E402

# Largest error allowed, relative to the largest |output|.
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


class Case:
    """A batch of sequences, each (query_len, context_len), with its K/V already in a paged cache.

    The cache is a view of layer 1 of a two-layer pool (non-zero storage offset), blocks are handed out
    in a random order, and every slot not holding a sequence's token is filled with `garbage`."""

    def __init__(self, seqs: list[tuple[int, int]], heads: int, kv_heads: int, head_dim: int = 64,
                 block_size: int = 4, dtype: torch.dtype = torch.float32, garbage: float = 1e4, seed: int = 0,
                 q_layout: str = "contiguous"):
        g = torch.Generator().manual_seed(seed)
        self.seqs, self.heads, self.block_size, self.dtype = seqs, heads, block_size, dtype
        self.scale = 1 / math.sqrt(head_dim)
        tokens = sum(q for q, _ in seqs)
        blocks_per_seq = [-(-c // block_size) for _, c in seqs]
        max_blocks = max(max(blocks_per_seq), 1) + 1  # one padding column
        num_blocks = sum(blocks_per_seq) + 3  # a few blocks nobody owns
        pool = torch.full((2, 2, num_blocks, block_size, kv_heads, head_dim), garbage, dtype=dtype)
        self.k_cache, self.v_cache = pool[1, 0], pool[1, 1]
        order = torch.randperm(num_blocks, generator=g).tolist()
        self.block_tables = torch.zeros(len(seqs), max_blocks, dtype=torch.int32)
        self.keys, self.values = [], []  # per sequence: [context_len, kv_heads, head_dim]
        for s, (_, ctx) in enumerate(seqs):
            own = [order.pop() for _ in range(blocks_per_seq[s])]
            self.block_tables[s, :len(own)] = torch.tensor(own, dtype=torch.int32)
            keys = torch.randn(ctx, kv_heads, head_dim, generator=g).to(dtype)
            values = torch.randn(ctx, kv_heads, head_dim, generator=g).to(dtype)
            for p in range(ctx):
                self.k_cache[own[p // block_size], p % block_size] = keys[p]
                self.v_cache[own[p // block_size], p % block_size] = values[p]
            self.keys.append(keys)
            self.values.append(values)
        self.context_lens = torch.tensor([c for _, c in seqs], dtype=torch.int32)
        self.query_start = torch.tensor([0] + [q for q, _ in seqs], dtype=torch.int32).cumsum(0).to(torch.int32)
        self.max_query_len = max(q for q, _ in seqs)
        q = torch.randn(tokens, heads, head_dim, generator=g).to(dtype)
        if q_layout == "fused_qkv":  # q as the model slices it out of the fused projection's output
            qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, generator=g).to(dtype)
            qkv[:, :heads * head_dim] = q.view(tokens, -1)
            q = qkv[:, :heads * head_dim].view(tokens, heads, head_dim)
        elif q_layout == "head_stride":  # heads further apart than head_dim
            wide = torch.randn(tokens, heads, head_dim + 16, generator=g).to(dtype)
            wide[..., :head_dim] = q
            q = wide[..., :head_dim]
        self.q = q

    def run(self, out: torch.Tensor | None = None, num_splits: int | None = None, decode_seqs: int = 0) -> torch.Tensor:
        args = [t.to(DEVICE) for t in (self.q, self.k_cache, self.v_cache, self.block_tables,
                                       self.context_lens, self.query_start)]
        return paged_attention(*args, self.max_query_len, self.scale, out=out, num_splits=num_splits,
                               decode_seqs=decode_seqs)

    def reference(self) -> torch.Tensor:
        out = torch.zeros(self.q.shape, dtype=torch.float64)  # [tokens, heads, head_dim]
        for s, (q_len, ctx) in enumerate(self.seqs):
            if q_len == 0 or ctx == 0:
                continue
            start = int(self.query_start[s])
            group = self.heads // self.keys[s].shape[1]
            keys = self.keys[s].double().repeat_interleave(group, dim=1)  # [ctx, heads, head_dim]
            values = self.values[s].double().repeat_interleave(group, dim=1)
            q = self.q[start:start + q_len].double()
            scores = torch.einsum("qhd,khd->hqk", q, keys) * self.scale
            q_pos = ctx - q_len + torch.arange(q_len)
            visible = torch.arange(ctx)[None, :] <= q_pos[:, None]  # [q_len, ctx]
            probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
            out[start:start + q_len] = torch.einsum("hqk,khd->qhd", probs, values)
        return out


def assert_matches(y: torch.Tensor, case: Case) -> None:
    ref = case.reference()
    assert y.dtype == case.dtype and y.shape == ref.shape
    y = y.double().cpu()
    assert torch.isfinite(y).all()
    err = (y - ref).abs().max().item()
    assert err <= REL_TOL[case.dtype] * ref.abs().max().item(), f"max error {err} vs max |ref| {ref.abs().max()}"


HEADS = [pytest.param(4, 4, id="mha"), pytest.param(4, 2, id="gqa"), pytest.param(8, 1, id="mqa")]

# Contexts against the interpreter's 32-key tiles (each split takes whole tiles, at least 2): 1, 40 and
# 64 tokens fit one split (it writes the output itself, no merge); 96 splits 64 + 32; 200 fills 3 splits
# of 3 tiles, the last partial (and 4 of 16); 500 gives 8 splits keys and leaves the rest of 16 empty.
# (1, 0) is a padding sequence (its row must be zeros), (0, 0) one without a query (no row).
SPLIT_DECODE = [(1, 40), (1, 0), (1, 1), (0, 0), (1, 64), (1, 96), (1, 200), (1, 500)]
PADDING_ROW = 1


def fp8_case(case: Case, k_scale: float, v_scale: float) -> Case:
    """`case` with its caches quantized as the store leaves them (garbage included: NaN stays NaN, 1e4
    saturates) and its reference keys and values the dequantized cache."""
    case.k_cache, case.v_cache = quantize_kv(case.k_cache, k_scale), quantize_kv(case.v_cache, v_scale)
    case.keys = [quantize_kv(k, k_scale).double() * k_scale for k in case.keys]
    case.values = [quantize_kv(v, v_scale).double() * v_scale for v in case.values]
    return case


def run_fp8(case: Case, k_scale: float, v_scale: float, num_splits: int | None = None,
            decode_seqs: int = 0) -> torch.Tensor:
    args = [t.to(DEVICE) for t in (case.q, case.k_cache, case.v_cache, case.block_tables, case.context_lens,
                                   case.query_start)]
    return paged_attention(*args, case.max_query_len, case.scale, k_scale=k_scale, v_scale=v_scale,
                           num_splits=num_splits, decode_seqs=decode_seqs)
