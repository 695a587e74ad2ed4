"""A step's host-side inputs (engine/step_inputs.py), built from scheduled sequences without a model."""
from __future__ import annotations

import pytest

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
