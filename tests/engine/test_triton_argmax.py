"""The one-launch greedy argmax (engine/layers/triton/argmax.py) against torch's argmax of the logits with
the banned tokens set to -inf. Without CUDA it runs in Triton's interpreter."""
from __future__ import annotations

import pytest
import torch

from tests.engine.triton_env import DEVICE  # first: it sets up Triton's interpreter without CUDA

import engine.layers.triton.argmax as argmax_module  # noqa: E402
from engine.layers.triton.argmax import greedy_tokens  # noqa: E402


def reference(logits: torch.Tensor, banned: torch.Tensor | None) -> torch.Tensor:
    masked = logits.clone()
    if banned is not None:
        for row, ids in enumerate(banned.tolist()):
            masked[row, [t for t in ids if t >= 0]] = float("-inf")
    return masked.argmax(dim=-1)


def logits_with_ties(rows: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(rows * 31 + vocab)
    logits = torch.randn(rows, vocab, generator=g)
    logits[0, [vocab // 3, vocab // 2, vocab - 1]] = logits.max() + 1  # equal maxima in different chunks
    return logits


@pytest.mark.parametrize("rows,vocab", [(1, 125696), (3, 49152), (2, 50257), (5, 4096), (1, 1000), (2, 1)])
def test_first_index_of_the_maximum_ties_across_chunks(rows, vocab):
    logits = logits_with_ties(rows, vocab)
    assert torch.equal(greedy_tokens(logits.to(DEVICE)).cpu(), logits.argmax(dim=-1))


def test_nan_counts_as_the_largest_and_the_first_nan_wins():
    logits = logits_with_ties(3, 9000)
    logits[2, [8999, 2500, 4100]] = float("nan")  # in the last, second and third chunk
    logits[1, 1] = float("nan")
    got = greedy_tokens(logits.to(DEVICE)).cpu()
    assert torch.equal(got, logits.argmax(dim=-1)) and got[1:].tolist() == [1, 2500]


def test_rows_of_minus_infinity_give_index_zero():
    logits = torch.full((2, 5000), float("-inf"))
    logits[1, 4321] = 0.0
    assert greedy_tokens(logits.to(DEVICE)).cpu().tolist() == [0, 4321]


def test_banned_tokens_are_never_picked():
    logits = logits_with_ties(3, 7000)
    top = logits.argmax(dim=-1)
    # Row 0 bans its first two maxima (the third, in another chunk, wins), row 1 nothing, row 2 its argmax.
    banned = torch.tensor([[int(top[0]), 7000 // 2, -1], [-1, -1, -1], [int(top[2]), 5, 6999]])
    got = greedy_tokens(logits.to(DEVICE), banned.to(DEVICE)).cpu()
    assert torch.equal(got, reference(logits, banned))
    assert got[0] == 6999 and got[1] == top[1] and got[2] != top[2]


def test_banning_every_token_of_a_row_gives_index_zero():
    logits = torch.randn(1, 8)
    assert greedy_tokens(logits.to(DEVICE), torch.arange(8)[None].to(DEVICE)).tolist() == [0]


def test_no_rows_give_no_tokens():
    # A step whose sequences all stop mid-prompt (a chunked prefill) samples nothing.
    assert greedy_tokens(torch.randn(0, 5000).to(DEVICE)).shape == (0,)


def test_rows_past_one_launch_go_in_several(monkeypatch):
    monkeypatch.setattr(argmax_module, "MAX_ROW_TILES_SPLIT", 2)  # the arrival counters one launch may use
    logits = logits_with_ties(5, 3000)
    banned = torch.tensor([[7], [-1], [int(logits[2].argmax())], [-1], [0]])
    assert torch.equal(greedy_tokens(logits.to(DEVICE), banned.to(DEVICE)).cpu(), reference(logits, banned))


def test_launches_leave_the_arrival_counters_at_zero():
    from engine.layers.triton.split_k import arrival_counters

    logits = logits_with_ties(4, 5000).to(DEVICE)
    greedy_tokens(logits)
    greedy_tokens(logits)
    assert int(arrival_counters(logits.device).abs().sum()) == 0


@pytest.mark.parametrize("bad,why", [
    (lambda: greedy_tokens(torch.randn(4).to(DEVICE)), "2-D"),
    (lambda: greedy_tokens(torch.randn(2, 8).to(DEVICE).t()), "contiguous"),
    (lambda: greedy_tokens(torch.randn(2, 8).to(DEVICE), torch.zeros(3, 1, dtype=torch.long).to(DEVICE)), r"\[2, n\]"),
    (lambda: greedy_tokens(torch.randn(2, 8).to(DEVICE), torch.zeros(2, 1, dtype=torch.int32).to(DEVICE)), "int64"),
])
def test_bad_inputs_are_named(bad, why):
    with pytest.raises(ValueError, match=why):
        bad()
