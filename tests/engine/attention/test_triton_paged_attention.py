"""The Triton paged-attention kernel against a float64 per-sequence reference. Without CUDA it runs in
Triton's interpreter on small shapes; bfloat16 runs on CUDA only (the interpreter's bfloat16 is
unreliable). Every case uses a shuffled block table and leaves garbage (NaN where asked) in the cache
slots no sequence owns, which the kernel must never read into its output (paged_case.py builds them).
The unsplit decode kernel of paged_decode.py has its own file, test_triton_paged_decode.py."""
from __future__ import annotations

import pytest
import torch

from tests.engine.triton_env import DEVICE, DTYPES  # first: it sets up Triton's interpreter without CUDA

import triton  # noqa: E402

from engine.layers.attention.kv_quant import quantize_kv  # noqa: E402
from engine.layers.attention.triton import paged_attention as paged_attention_module  # noqa: E402
from engine.layers.attention.triton import paged_attention_split  # noqa: E402
from engine.layers.attention.triton.paged_attention import (NewKV, decode_splits, multiprocessors,  # noqa: E402
                                                             paged_attention)
from engine.layers.attention.triton.rope_store_kv import rope_store_kv  # noqa: E402
from engine.layers.rotary import RotaryEmbedding  # noqa: E402
from tests.engine.attention.paged_case import (HEADS, PADDING_ROW, REL_TOL, SPLIT_DECODE, Case,  # noqa: E402
                                               assert_matches, fp8_case, run_fp8)

DECODE = [(1, 1), (1, 5), (1, 16), (1, 37)]  # lengths 5 and 37 end inside a cache block
PREFILL = [(7, 7), (20, 20)]
CHUNKED = [(5, 23), (16, 40)]  # earlier chunks already cached
# Row tiles whose rows all see whole key tiles (taken without masks), from the cache and the prompt alike.
LONG = [(70, 70), (24, 90)]
MIXED = [(1, 9), (12, 12), (1, 33), (6, 30)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads", HEADS)
@pytest.mark.parametrize("seqs", [pytest.param(DECODE, id="decode"), pytest.param(MIXED, id="mixed")])
def test_matches_reference(seqs, heads, kv_heads, dtype):
    case = Case(seqs, heads, kv_heads, dtype=dtype, seed=heads * 10 + kv_heads)
    assert_matches(case.run(), case)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seqs", [pytest.param(PREFILL, id="prefill"), pytest.param(CHUNKED, id="chunked"),
                                  pytest.param(LONG, id="long")])
def test_prefill_spans_several_row_tiles(seqs, dtype):
    # 20 queries x 4 heads per KV head = 80 rows: two 64-row tiles, the second cut off causally.
    case = Case(seqs, 8, 2, dtype=dtype, block_size=16, seed=len(seqs[0]))
    assert_matches(case.run(), case)


# Decodes first (the scheduler's order), one of them long enough for several key tiles, then prompt chunks
# and a decode the leading count does not claim.
LEADING_DECODES = [(1, 9), (1, 70), (1, 33), (12, 12), (6, 30), (1, 5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads", HEADS)
@pytest.mark.parametrize("decode_seqs", [1, 3])
def test_mixed_batch_attends_its_leading_decodes_apart(decode_seqs, heads, kv_heads, dtype):
    case = Case(LEADING_DECODES, heads, kv_heads, dtype=dtype, garbage=float("nan"), seed=decode_seqs)
    y = case.run(decode_seqs=decode_seqs)
    assert_matches(y, case)
    torch.testing.assert_close(y, case.run(), rtol=REL_TOL[dtype], atol=REL_TOL[dtype])


def test_fp8_mixed_batch_attends_its_leading_decodes_apart():
    case = fp8_case(Case(LEADING_DECODES, 8, 2, garbage=float("nan"), seed=7), 0.3, 2.5)
    assert_matches(run_fp8(case, 0.3, 2.5, decode_seqs=3), case)


@pytest.mark.parametrize("decode_seqs", [-1, 7, 1.0, True])
def test_rejects_bad_decode_seqs(decode_seqs):
    with pytest.raises(ValueError, match=r"^decode_seqs: must be a Python int from 0 to the 6 sequences"):
        Case(LEADING_DECODES, 4, 2).run(decode_seqs=decode_seqs)


@pytest.mark.parametrize("head_dim", [80, 96])
def test_head_dim_not_a_power_of_two(head_dim):
    case = Case(MIXED, 4, 2, head_dim=head_dim, seed=head_dim)
    assert_matches(case.run(), case)


def test_nan_in_unused_slots_never_leaks():
    case = Case(MIXED + [(1, 2)], 4, 2, garbage=float("nan"), seed=3)
    assert torch.isnan(case.k_cache).any() and torch.isnan(case.v_cache).any()
    assert_matches(case.run(), case)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA every test runs the for loop")
@pytest.mark.parametrize("seqs,num_splits", [pytest.param(MIXED, None, id="mixed"),
                                             pytest.param([(1, 1), (1, 0), (1, 150)], 3, id="split-decode")])
def test_interpreter_runs_the_compiled_for_loop(monkeypatch, seqs, num_splits):
    """The interpreter normally walks keys in a while loop (Triton 3.6's cannot do the for loop)."""
    monkeypatch.setattr(paged_attention_module, "INTERPRET_WITH_WHILE_LOOP", False)
    case = Case(seqs, 4, 2, seed=11)
    try:
        out = case.run(num_splits=num_splits)
    except triton.runtime.errors.InterpreterError as e:
        if "0-dimensional" not in str(e):
            raise
        pytest.skip(f"Triton {triton.__version__}'s interpreter cannot loop to a run-time bound")
    assert_matches(out, case)


def test_block_table_is_shuffled():
    """The cases above only mean something if blocks are not handed out in order."""
    case = Case([(1, 37)], 4, 2, seed=0)
    used = case.block_tables[0, :10]
    assert not torch.equal(used, used.sort().values)


@pytest.mark.parametrize("q_layout", ["fused_qkv", "head_stride"])
def test_strided_q_and_out(q_layout):
    case = Case(MIXED, 4, 2, seed=5, q_layout=q_layout)
    assert not case.q.is_contiguous()
    wide = torch.full((case.q.shape[0], 4, 80), 7.0, device=DEVICE)  # out as a view with padded heads
    out = wide[..., :64]
    assert case.run(out=out) is out
    assert_matches(out, case)
    assert (wide[..., 64:] == 7.0).all()


def test_padding_sequences_give_zero_rows():
    # CUDA graphs replay a batch padded with context_len-0 sequences; a 0-length query has no rows.
    case = Case([(1, 9), (1, 0), (0, 0), (3, 12), (1, 0)], 4, 2, garbage=float("nan"), seed=7)
    out = torch.full(case.q.shape, float("nan"), device=DEVICE)
    case.run(out=out)
    assert_matches(out, case)
    assert (out[1] == 0).all() and (out[5] == 0).all()


def test_empty_batch():
    case = Case([(1, 5)], 4, 2)
    q = case.q[:0].to(DEVICE)
    args = [t.to(DEVICE) for t in (case.k_cache, case.v_cache, case.block_tables[:0], case.context_lens[:0])]
    out = paged_attention(q, *args, torch.zeros(1, dtype=torch.int32, device=DEVICE), 0, case.scale)
    assert out.shape == (0, 4, 64)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_7b_shapes(dtype):
    """Llama-7B's head layout (32 heads of 128) and block size 16, decode and a mixed batch."""
    for seqs in ([(1, 1), (1, 300), (1, 77), (1, 1000)], [(1, 300), (200, 200), (64, 500), (1, 0)]):
        case = Case(seqs, 32, 8, head_dim=128, block_size=16, dtype=dtype, garbage=float("nan"))
        assert_matches(case.run(), case)


def test_rejects_bad_inputs(monkeypatch):
    case = Case([(1, 5), (2, 6)], 4, 2)
    q, kc, vc, bt, cl, qs = (t.to(DEVICE) for t in (case.q, case.k_cache, case.v_cache, case.block_tables,
                                                     case.context_lens, case.query_start))

    def call(**kw):
        args = dict(q=q, k_cache=kc, v_cache=vc, block_tables=bt, context_lens=cl, query_start=qs,
                    max_query_len=2, scale=0.125)
        return paged_attention(**{**args, **kw})

    with pytest.raises(ValueError, match=r"^q: .*dtype"):
        call(q=q.double())
    with pytest.raises(ValueError, match=r"^k_cache: .*dtype"):
        call(k_cache=kc.half())
    with pytest.raises(ValueError, match=r"^block_tables: .*dtype.*int32"):
        call(block_tables=bt.long())
    with pytest.raises(ValueError, match=r"^k_cache: .*KV heads must divide q's 3 heads"):
        call(q=q[:, :3])
    with pytest.raises(ValueError, match=r"^k_cache: head_dim"):
        call(q=q[..., :32])
    with pytest.raises(ValueError, match=r"^v_cache: .*shape"):
        call(v_cache=vc[:, :, :1])
    with pytest.raises(ValueError, match=r"^context_lens: .*shape"):
        call(context_lens=cl[:1])
    with pytest.raises(ValueError, match=r"^query_start: .*shape"):
        call(query_start=qs[:2])
    with pytest.raises(ValueError, match=r"^q: .*last dim"):
        call(q=q.transpose(1, 2).contiguous().transpose(1, 2))
    with pytest.raises(ValueError, match=r"^out: .*shape"):
        call(out=torch.empty(2, 4, 64, device=DEVICE))
    with pytest.raises(ValueError, match=r"^max_query_len"):
        call(max_query_len=torch.tensor(2))
    with pytest.raises(ValueError, match=r"^context_lens: .*meta"):
        call(context_lens=cl.to("meta"))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # outside the interpreter, CPU q is an error
    with pytest.raises(ValueError, match=r"^q: .*CUDA"):
        paged_attention(q.cpu(), kc.cpu(), vc.cpu(), bt.cpu(), cl.cpu(), qs.cpu(), 2, 0.125)


# -- split-KV decode (paged_attention_split.py; SPLIT_DECODE's contexts: paged_case.py) --------------------

def assert_split_matches(case: Case, num_splits: int, run=None) -> None:
    """The split path matches the reference and the unsplit kernel, and writes the padding row as zeros."""
    run = run or (lambda n: case.run(num_splits=n))
    out = run(num_splits)
    assert_matches(out, case)
    tol = REL_TOL[case.dtype] * case.reference().abs().max().item()
    assert (out.double() - run(1).double()).abs().max().item() <= tol
    assert (out[PADDING_ROW] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_splits", [1, 2, 3, 16])
@pytest.mark.parametrize("heads,kv_heads", HEADS)
def test_split_decode_matches_reference_and_unsplit(heads, kv_heads, num_splits, dtype):
    case = Case(SPLIT_DECODE, heads, kv_heads, dtype=dtype, garbage=float("nan"), seed=num_splits)
    assert_split_matches(case, num_splits)


def test_split_decode_writes_only_its_rows():
    """Like the unsplit kernel: every query row written (padding as zeros), other views of out untouched."""
    case = Case(SPLIT_DECODE, 4, 2, garbage=float("nan"), seed=4)
    wide = torch.full((case.q.shape[0], 4, 80), float("nan"), device=DEVICE)
    out = wide[..., :64]
    assert case.run(out=out, num_splits=3) is out
    assert_matches(out, case)
    assert torch.isnan(wide[..., 64:]).all()


def test_decode_splits():
    assert decode_splits(1, 32, 132) == 8  # a 7B model at batch 1 on an H100: 264 programs / 32
    assert decode_splits(2, 32, 132) == 4
    assert decode_splits(4, 32, 132) == 2
    assert decode_splits(8, 32, 132) == 1  # 264 // 256: busy enough
    assert decode_splits(64, 32, 132) == 1
    assert decode_splits(1, 8, 132) == 16  # GQA at batch 1: capped at MAX_SPLITS
    assert decode_splits(1, 1, 132) == 16


def test_decode_batches_split_automatically(monkeypatch):
    """Without num_splits a decode-only batch splits as decode_splits says; a mixed batch never does."""
    seen = []
    original = paged_attention_split.split_paged_attention

    def spy(*args, **kwargs):
        seen.append(kwargs["splits"])
        original(*args, **kwargs)

    monkeypatch.setattr(paged_attention_split, "split_paged_attention", spy)
    case = Case([(1, 77), (1, 1)], 4, 2, seed=2)
    assert_matches(case.run(), case)
    expected = decode_splits(2, 2, multiprocessors(torch.device(DEVICE)))
    assert expected > 1 and seen == [expected]
    case = Case(MIXED, 4, 2, seed=2)
    assert_matches(case.run(), case)
    assert seen == [expected]


@pytest.mark.parametrize("num_splits", [0, -1, 17, True, 2.0, "2"])
def test_rejects_bad_num_splits(num_splits):
    case = Case([(1, 5)], 4, 2)
    with pytest.raises(ValueError, match=r"^num_splits: must be None or a Python int from 1 to 16"):
        case.run(num_splits=num_splits)


def test_rejects_splitting_a_prefill():
    case = Case(MIXED, 4, 2)
    with pytest.raises(ValueError, match=r"^num_splits: .*decode-only.*max_query_len 12"):
        case.run(num_splits=2)
    assert_matches(case.run(num_splits=1), case)  # 1 (no split) is every batch's


# -- RoPE and the KV store inside the split decode kernel (NewKV) ---------------------------------------------

def new_kv_operands(case: Case, seed: int) -> tuple[torch.Tensor, ...]:
    """For each decode token: this step's unrotated k and v, the cache slot of its position ctx - 1
    (-1 for a padding sequence) and the position; and RoPE's float32 tables."""
    g = torch.Generator().manual_seed(seed)
    tokens, _, head_dim = case.q.shape
    kv_heads = case.k_cache.shape[2]
    k = torch.randn(tokens, kv_heads, head_dim, generator=g).to(case.dtype)
    v = torch.randn(tokens, kv_heads, head_dim, generator=g).to(case.dtype)
    slots, positions = [], []
    for s, (q_len, ctx) in enumerate(case.seqs):
        if q_len:
            p = max(ctx - 1, 0)
            slots.append(int(case.block_tables[s, p // case.block_size]) * case.block_size + p % case.block_size
                         if ctx else -1)
            positions.append(p)
    rotary = RotaryEmbedding(head_dim, 1024, 10000.0, None)
    return k, v, torch.tensor(slots), torch.tensor(positions), rotary.cos, rotary.sin


def rope_store_then_attend_vs_new_kv(case: Case, num_splits: int, monkeypatch, k_scale: float = 1.0,
                                     v_scale: float = 1.0) -> None:
    """paged_attention with NewKV gives the cache and the output of rope_store_kv, then paged_attention:
    bit for bit. A split launch does it in the attention kernel (rope_store_kv must not run)."""
    on_device = lambda *ts: [t.to(DEVICE) for t in ts]  # noqa: E731
    new = on_device(*new_kv_operands(case, seed=num_splits))
    bt, cl, qs = on_device(case.block_tables, case.context_lens, case.query_start)
    q, kc, vc = on_device(case.q.clone(), case.k_cache.clone(), case.v_cache.clone())
    rope_store_kv(q, new[0], new[1], kc, vc, *new[2:], k_scale, v_scale)
    expected = paged_attention(q, kc, vc, bt, cl, qs, 1, case.scale, k_scale=k_scale, v_scale=v_scale,
                               num_splits=num_splits)
    if num_splits > 1:
        monkeypatch.setattr(paged_attention_module, "rope_store_kv", lambda *a: pytest.fail("rope_store_kv ran"))
    q, kc_fused, vc_fused = on_device(case.q.clone(), case.k_cache.clone(), case.v_cache.clone())
    out = paged_attention(q, kc_fused, vc_fused, bt, cl, qs, 1, case.scale, k_scale=k_scale, v_scale=v_scale,
                          num_splits=num_splits, new_kv=NewKV(*new))
    for fused, unfused in ((kc_fused, kc), (vc_fused, vc)):  # unowned slots hold NaN in both
        torch.testing.assert_close(fused.float(), unfused.float(), rtol=0, atol=0, equal_nan=True)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_splits", [1, 2, 16])
@pytest.mark.parametrize("heads,kv_heads", HEADS)
def test_split_decode_rotates_and_stores_the_new_kv_itself(heads, kv_heads, num_splits, dtype, monkeypatch):
    case = Case(SPLIT_DECODE, heads, kv_heads, dtype=dtype, garbage=float("nan"), seed=num_splits)
    rope_store_then_attend_vs_new_kv(case, num_splits, monkeypatch)


def test_split_decode_rotates_a_head_dim_not_a_power_of_two(monkeypatch):
    """head_dim 80: the tile is 128 wide and each dim's partner is 40 away, not half the tile."""
    case = Case(SPLIT_DECODE, 4, 2, head_dim=80, garbage=float("nan"), seed=3)
    rope_store_then_attend_vs_new_kv(case, 3, monkeypatch)


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_decode_stores_the_new_kv_into_an_fp8_cache(dtype, monkeypatch):
    case = fp8_case(Case(SPLIT_DECODE, 8, 2, dtype=dtype, garbage=float("nan"), seed=5), 0.3, 2.5)
    rope_store_then_attend_vs_new_kv(case, 3, monkeypatch, 0.3, 2.5)


def test_new_kv_is_checked():
    case = Case([(1, 5), (1, 9)], 4, 2)
    args = [t.to(DEVICE) for t in (case.q, case.k_cache, case.v_cache, case.block_tables, case.context_lens,
                                   case.query_start)]
    k, v, slots, positions, cos, sin = (t.to(DEVICE) for t in new_kv_operands(case, seed=0))
    with pytest.raises(ValueError, match=r"^new_kv: must be a NewKV, got tuple"):
        paged_attention(*args, 1, case.scale, new_kv=(k, v))
    with pytest.raises(ValueError, match=r"^positions: must have one entry per token \(2\), got 1"):
        paged_attention(*args, 1, case.scale, new_kv=NewKV(k, v, slots, positions[:1], cos, sin))


# -- fp8 (e4m3) caches: the interpreter loads and widens e4m3 exactly, so these run on CPU too ------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k_scale,v_scale", [(1.0, 1.0), (0.3, 2.5)])
@pytest.mark.parametrize("heads,kv_heads", HEADS)
def test_fp8_cache_matches_reference_over_the_dequantized_cache(heads, kv_heads, k_scale, v_scale, dtype):
    case = fp8_case(Case(MIXED + [(1, 2)], heads, kv_heads, dtype=dtype, garbage=float("nan"), seed=heads + kv_heads),
                    k_scale, v_scale)
    assert case.k_cache.dtype == torch.float8_e4m3fn and torch.isnan(case.k_cache.float()).any()
    assert_matches(run_fp8(case, k_scale, v_scale), case)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_splits", [3, 16])
def test_fp8_split_decode(num_splits, dtype):
    """k_scale folded into the scores of every split, v_scale applied once, at the merge."""
    case = fp8_case(Case(SPLIT_DECODE, 8, 2, dtype=dtype, garbage=float("nan"), seed=num_splits), 0.3, 2.5)
    assert_split_matches(case, num_splits, lambda n: run_fp8(case, 0.3, 2.5, num_splits=n))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fp8_7b_shapes(dtype):
    for seqs in ([(1, 1), (1, 300), (1, 77), (1, 1000)], [(1, 300), (200, 200), (64, 500), (1, 0)]):
        case = fp8_case(Case(seqs, 32, 8, head_dim=128, block_size=16, dtype=dtype, garbage=float("nan")), 0.02, 0.01)
        assert_matches(run_fp8(case, 0.02, 0.01), case)


def test_fp8_rejects_mixed_caches_and_stray_scales():
    case = Case([(1, 5), (2, 6)], 4, 2)
    q, kc, vc, bt, cl, qs = (t.to(DEVICE) for t in (case.q, case.k_cache, case.v_cache, case.block_tables,
                                                     case.context_lens, case.query_start))
    kc8, vc8 = quantize_kv(kc, 1.0), quantize_kv(vc, 1.0)
    with pytest.raises(ValueError, match=r"^v_cache: .*dtype must be torch.float8_e4m3fn, got torch.float32"):
        paged_attention(q, kc8, vc, bt, cl, qs, 2, 0.125)
    with pytest.raises(ValueError, match=r"^k_scale: only an fp8"):
        paged_attention(q, kc, vc, bt, cl, qs, 2, 0.125, k_scale=0.5)
    with pytest.raises(ValueError, match=r"^v_scale: must be a Python float"):
        paged_attention(q, kc8, vc8, bt, cl, qs, 2, 0.125, v_scale=torch.tensor(1.0))
