"""Which CUDA graphs a step replays (ModelRunner._graphed_parts), decided on the host without a model. The
graphs themselves need a GPU (tests/engine/test_cuda_graphs_mixed.py); here a stand-in, named as such,
answers which shapes are captured."""
from __future__ import annotations

import pytest

from engine.model_runner import ModelRunner
from tests.engine.test_step_inputs import scheduled


class CapturedShapesStandIn:
    """Answers like StepGraphs for chunks up to max_chunk tokens and mixed steps up to max_decodes decodes."""

    def __init__(self, max_chunk: int, max_decodes: int):
        self.max_chunk, self.max_decodes = max_chunk, max_decodes

    def covers(self, chunk_lengths):
        return all(n <= self.max_chunk for n in chunk_lengths)

    def covers_mixed(self, decodes, chunk_length):
        return decodes <= self.max_decodes and chunk_length <= self.max_chunk


def parts(lens, max_chunk=512, max_decodes=64):
    runner = ModelRunner(model=None, block_size=4, device=None)
    runner.graphs = CapturedShapesStandIn(max_chunk, max_decodes)
    return runner._graphed_parts([scheduled(*x) for x in lens])


DECODE, PROMPT, LONG = (9, 8, 1), (12, 0, 12), (600, 0, 600)


@pytest.mark.parametrize("lens,expected", [
    pytest.param([DECODE, DECODE], [[0, 1]], id="decode-only"),
    pytest.param([DECODE, DECODE, PROMPT], [[0, 1, 2]], id="decodes-and-a-chunk-one-mixed-graph"),
    pytest.param([PROMPT, DECODE, DECODE], [[1, 2, 0]], id="the-chunk-moved-after-the-decodes"),
    pytest.param([DECODE, PROMPT, PROMPT], [[0, 1], [2]], id="a-second-chunk-its-own-prefill-graph"),
    pytest.param([PROMPT], [[0]], id="a-lone-chunk"),
    pytest.param([DECODE, PROMPT, PROMPT, PROMPT], None, id="three-chunks-eager"),
    pytest.param([DECODE, LONG], None, id="a-chunk-past-the-graphs-eager"),
])
def test_steps_are_split_into_graph_replays(lens, expected):
    assert parts(lens) == expected


def test_too_many_decodes_for_a_mixed_graph_replay_the_decode_and_prefill_graphs_apart():
    assert parts([DECODE, DECODE, DECODE, PROMPT], max_decodes=2) == [[0, 1, 2], [3]]
