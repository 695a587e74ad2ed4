"""A step's host-side inputs (engine/step_inputs.py), built from scheduled sequences without a model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledSequence
from engine.sequence import Sequence
from engine.step_inputs import StepInputs

BLOCK_SIZE = 4


def scheduled(prompt_len: int, computed: int, n: int) -> ScheduledSequence:
    """A sequence with `computed` of its prompt_len tokens cached, scheduled for n more."""
    seq = Sequence(f"r{prompt_len}-{computed}", list(range(1, prompt_len + 1)), SamplingParams(max_tokens=8),
                   max_total_tokens=64, num_computed_tokens=computed)
    seq.block_table = list(range(10, 10 + -(-prompt_len // BLOCK_SIZE)))
    return ScheduledSequence(seq, n)


@pytest.mark.parametrize("lens,leading", [
    pytest.param([(9, 8, 1), (5, 4, 1), (12, 0, 12), (7, 6, 1)], 2, id="decodes-then-prefill"),
    pytest.param([(12, 0, 12), (9, 8, 1)], 0, id="prefill-first"),
    pytest.param([(9, 8, 1), (5, 4, 1)], 2, id="decodes-only"),
    pytest.param([(20, 8, 6), (9, 8, 1)], 0, id="chunk-first"),
])
def test_leading_decodes_counts_the_one_token_sequences_at_the_start(lens, leading):
    inputs = StepInputs.build([scheduled(*x) for x in lens], BLOCK_SIZE)
    assert inputs.leading_decodes == leading
    assert inputs.query_start.tolist()[:leading + 1] == list(range(leading + 1))
    assert inputs.max_query_len == max(n for _, _, n in lens)


@pytest.mark.parametrize("lens,fresh", [
    # decodes, a later chunk of a prompt, then two new prompts (the first of them only its first chunk)
    pytest.param([(9, 8, 1), (20, 8, 6), (12, 0, 12), (30, 0, 7)], (7, (12, 7)), id="decodes-chunk-prompts"),
    pytest.param([(12, 0, 12), (5, 0, 5)], (0, (12, 5)), id="prompts-only"),
    pytest.param([(9, 8, 1), (20, 8, 6)], None, id="no-prompt-at-the-end"),
    pytest.param([(12, 0, 12), (20, 8, 6)], None, id="a-chunk-after-the-prompt"),
    pytest.param([(9, 8, 1), (5, 4, 1)], None, id="decodes-only"),
    # a one-token prompt after the decodes: fresh, but a decode-only step attends it with the decodes
    pytest.param([(9, 8, 1), (1, 0, 1)], None, id="one-token-prompt-decode-step"),
    # ... and in a prefill step among the leading decodes, which the decode kernels attend
    pytest.param([(9, 8, 1), (1, 0, 1), (4, 0, 4)], (2, (4,)), id="one-token-prompt-in-a-prefill"),
])
def test_fresh_prompts_are_the_trailing_sequences_with_nothing_cached(lens, fresh):
    inputs = StepInputs.build([scheduled(*x) for x in lens], BLOCK_SIZE)
    assert (inputs.fresh and (inputs.fresh.first_token, inputs.fresh.lens)) == fresh
    if fresh is not None:  # their context is all new tokens, and they come after the leading decodes
        first = inputs.num_seqs - inputs.fresh.seqs
        assert first >= inputs.leading_decodes
        assert inputs.query_start[first] == fresh[0]
        assert (inputs.context_lens[first:] == inputs.query_start[first + 1:] - inputs.query_start[first:-1]).all()


def test_carried_tokens_land_at_their_rows_or_at_the_rows_given():
    """Tokens still on the device (async scheduling) are written where the step's layout puts them, or,
    for a graph that pads the decodes (cuda_graphs.StepGraphs: a mixed graph), at the rows it names."""
    items = [scheduled(9, 8, 1), scheduled(5, 4, 1), scheduled(12, 0, 12)]
    items[0].seq.pending_row, items[1].seq.pending_row = 1, 0  # last step's rows 1 and 0, swapped
    inputs = StepInputs.build(items, BLOCK_SIZE)
    assert inputs.carried_rows.tolist() == [0, 1] and inputs.carried_from.tolist() == [1, 0]
    previous = torch.tensor([70, 71])
    ids = torch.from_numpy(inputs.input_ids.copy())
    inputs.fill_carried(ids, previous)
    assert ids[:2].tolist() == [71, 70] and ids[2:].tolist() == inputs.input_ids[2:].tolist()
    padded = torch.zeros(8, dtype=torch.long)
    inputs.fill_carried(padded, previous, rows=np.array([0, 3]))
    assert padded.tolist() == [71, 0, 0, 70, 0, 0, 0, 0]
    with pytest.raises(RuntimeError, match="previous step"):
        inputs.fill_carried(ids, None)
