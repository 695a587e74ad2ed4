import pytest

from engine.block_manager import BlockManager, blocks_for
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence


def make_seq(n_prompt: int, rid: str = "r") -> Sequence:
    return Sequence(rid, list(range(n_prompt)), SamplingParams(max_tokens=8), max_total_tokens=1024)


def test_blocks_for_rounds_up():
    assert [blocks_for(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_allocate_grows_block_table_only_by_what_is_missing():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(6)
    bm.allocate(seq, 6)
    assert len(seq.block_table) == 2 and bm.num_free_blocks == 6
    bm.allocate(seq, 8)  # still fits in two blocks
    assert len(seq.block_table) == 2
    bm.allocate(seq, 9)
    assert len(seq.block_table) == 3 and bm.num_used_blocks == 3
    assert len(set(seq.block_table)) == 3


def test_can_allocate_refuses_beyond_the_pool_and_allocate_raises():
    bm = BlockManager(num_blocks=2, block_size=4)
    seq = make_seq(9)
    assert not bm.can_allocate(seq, 9)
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        bm.allocate(seq, 9)
    assert bm.num_free_blocks == 2 and seq.block_table == []


def test_free_returns_every_block_and_resets_progress():
    bm = BlockManager(num_blocks=6, block_size=2)
    a, b = make_seq(5, "a"), make_seq(3, "b")
    bm.allocate(a, 5)
    bm.allocate(b, 3)
    a.num_computed_tokens = 5
    assert bm.num_free_blocks == 1
    bm.free(a)
    assert bm.num_free_blocks == 4 and a.block_table == [] and a.num_computed_tokens == 0
    bm.free(b)
    assert bm.num_free_blocks == bm.num_blocks
    # Blocks freed by one sequence are handed to the next.
    c = make_seq(12, "c")
    bm.allocate(c, 12)
    assert sorted(c.block_table) == list(range(6))


def test_rejects_empty_pool():
    with pytest.raises(ValueError):
        BlockManager(num_blocks=0, block_size=16)
