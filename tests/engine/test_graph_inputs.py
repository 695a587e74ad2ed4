"""The graphs' static inputs (engine/graph_inputs.py): one buffer, views the graphs read, one copy a step."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.graph_inputs import GraphInputs
from engine.step_inputs import StepInputs


def step(ids, positions, slots, context_lens, tables, leading_decodes=0) -> StepInputs:
    n = len(ids)
    return StepInputs(input_ids=np.array(ids, dtype=np.int64), positions=np.array(positions, dtype=np.int64),
                      slot_mapping=np.array(slots, dtype=np.int64), context_lens=np.array(context_lens, dtype=np.int32),
                      query_start=np.arange(len(tables) + 1, dtype=np.int32), logits_index=np.arange(n),
                      tables=tables, max_query_len=1, max_context_len=max(context_lens),
                      carried_rows=np.zeros(0, dtype=np.int64), carried_from=np.zeros(0, dtype=np.int64),
                      leading_decodes=leading_decodes)


@pytest.mark.parametrize("tokens,seqs,max_blocks", [(8, 8, 5), (13, 3, 7), (512, 256, 136)])
def test_views_are_disjoint_and_start_on_16_bytes(tokens, seqs, max_blocks):
    g = GraphInputs(tokens, seqs, max_blocks, torch.device("cpu"))
    views = [g.input_ids, g.positions, g.slot_mapping, g.logits_rows, g.context_lens, g.query_start,
             g.block_tables]
    assert all(v.data_ptr() % 16 == 0 for v in views)
    spans = sorted((v.data_ptr(), v.data_ptr() + v.numel() * v.element_size()) for v in views)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
    assert g.block_tables.shape == (seqs, max_blocks) and g.slot_mapping.tolist() == [-1] * tokens


def test_a_decode_step_lands_with_its_padding():
    g = GraphInputs(tokens=8, seqs=8, max_blocks=5, device=torch.device("cpu"))
    g.load(step([11, 12, 13], [40, 7, 20], [100, 7, 36], [41, 8, 21], [[6, 2, 9], [1], [4, 3]]))
    assert g.input_ids[:3].tolist() == [11, 12, 13] and g.positions[:3].tolist() == [40, 7, 20]
    assert g.slot_mapping.tolist() == [100, 7, 36] + [-1] * 5  # padding tokens store nothing
    assert g.context_lens.tolist() == [41, 8, 21] + [0] * 5  # padding sequences attend to nothing
    assert g.block_tables[:3].tolist() == [[6, 2, 9, 0, 0], [1, 0, 0, 0, 0], [4, 3, 0, 0, 0]]
    # A smaller step after it: the earlier step's tokens and sequences become padding again.
    g.load(step([5], [3], [3], [4], [[8]]))
    assert g.slot_mapping.tolist() == [3] + [-1] * 7 and g.context_lens.tolist() == [4] + [0] * 7
    assert g.block_tables[0].tolist() == [8, 0, 0, 0, 0]


def test_a_prefill_step_sets_its_query_start_and_last_token():
    g = GraphInputs(tokens=16, seqs=2, max_blocks=4, device=torch.device("cpu"))
    g.load_chunk_step(step(list(range(1, 6)), list(range(5)), list(range(20, 25)), [5], [[1, 2]]), 0, 16)
    assert g.query_start[:3].tolist() == [0, 5, 16] and g.logits_rows[:1].tolist() == [4]
    assert g.slot_mapping.tolist() == list(range(20, 25)) + [-1] * 11 and g.context_lens.tolist() == [5, 0]


def test_a_mixed_step_puts_its_chunk_after_the_padded_decodes():
    """Two decodes and a 3-token chunk into the (decode bucket 4, chunk bucket 8) graph's layout."""
    g = GraphInputs(tokens=12, seqs=6, max_blocks=3, device=torch.device("cpu"))
    g.load(step([1] * 10, [0] * 10, list(range(10)), [9] * 6, [[7]] * 6))  # an earlier step's leftovers
    g.load_chunk_step(step([11, 12, 21, 22, 23], [40, 7, 16, 17, 18], [100, 7, 48, 49, 50], [41, 8, 19],
                      [[6, 2, 9], [1], [5, 3]], leading_decodes=2), decode_bucket=4, chunk_bucket=8)
    assert g.input_ids[:7].tolist() == [11, 12, 0, 0, 21, 22, 23]
    assert g.positions[4:7].tolist() == [16, 17, 18]
    assert g.slot_mapping.tolist() == [100, 7, -1, -1, 48, 49, 50] + [-1] * 5  # padding stores nothing
    # Decodes, two padding decodes, the chunk, the chunk's padding as a sequence of its own.
    assert g.context_lens.tolist() == [41, 8, 0, 0, 19, 0]
    assert g.query_start[:7].tolist() == [0, 1, 2, 3, 4, 7, 12]
    assert g.logits_rows[:5].tolist() == [0, 1, 2, 3, 6]  # the decode slots, then the chunk's last token
    assert g.block_tables[0].tolist() == [6, 2, 9] and g.block_tables[1].tolist() == [1, 0, 0]
    assert g.block_tables[4].tolist() == [5, 3, 0]


def test_a_capture_runs_over_a_chunk_that_fills_its_bucket():
    g = GraphInputs(tokens=12, seqs=6, max_blocks=3, device=torch.device("cpu"))
    g.fill_bucket_layout(decode_bucket=4, chunk_bucket=8)
    assert g.query_start[:7].tolist() == [0, 1, 2, 3, 4, 12, 12] and g.logits_rows[:5].tolist() == [0, 1, 2, 3, 11]
    g.fill_bucket_layout(decode_bucket=0, chunk_bucket=16)  # a prefill graph's
    assert g.query_start[:3].tolist() == [0, 16, 16] and g.logits_rows[:1].tolist() == [15]
