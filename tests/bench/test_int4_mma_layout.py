"""bench/int4_mma's weight layout (CPU): the words the tensor-core GEMV experiment feeds to mma.sync hold
each lane's fragment of every 16 x 16 tile as its docstring's table says."""
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench" / "int4_mma"))

from layout import from_mma_fragments, scale_zero_words, to_mma_fragments  # noqa: E402

from engine.layers.quantization.int4 import pack  # noqa: E402

# nibble p of a lane's word: (row, column) offsets from (g, 2t) in its 16 x 16 tile
FRAGMENT = [(0, 0), (8, 0), (0, 8), (8, 8), (0, 1), (8, 1), (0, 9), (8, 9)]


def test_each_lane_word_holds_its_mma_fragment():
    q = torch.randint(0, 16, (32, 128), dtype=torch.uint8)
    words = to_mma_fragments(pack(q), 128, 64)
    assert words.shape == (2, 2, 32, 4)
    for tile, chunk, lane, step in [(0, 0, 0, 0), (1, 1, 31, 3), (1, 0, 13, 2), (0, 1, 6, 1)]:
        g, t = lane // 4, lane % 4
        word = int(words[tile, chunk, lane, step]) & 0xFFFFFFFF
        for p, (dr, dc) in enumerate(FRAGMENT):
            row, col = 16 * tile + g + dr, 64 * chunk + 16 * step + 2 * t + dc
            assert (word >> 4 * p) & 0xF == q[row, col], (tile, chunk, lane, step, p)
    assert torch.equal(from_mma_fragments(words, 64), q)


def test_scale_zero_words_pair_rows_g_and_g_plus_8():
    scales = torch.rand(32, 3).to(torch.bfloat16)
    zeros = torch.randint(0, 16, (32, 3), dtype=torch.uint8)
    words = scale_zero_words(scales, zeros)
    assert words.shape == (2, 3, 8, 2)
    for tile, group, g, half in [(0, 0, 0, 0), (1, 2, 5, 1), (1, 1, 7, 0)]:
        row = 16 * tile + 8 * half + g
        halves = words[tile, group, g, half].view(1).view(torch.bfloat16)  # little-endian: (low, high)
        assert halves[0] == scales[row, group]
        assert halves[1] == -(128 + int(zeros[row, group]))


def test_layout_refuses_shapes_it_cannot_tile():
    with pytest.raises(ValueError, match="N % 16 == 0, K % 64 == 0 and group_size % 64 == 0"):
        to_mma_fragments(pack(torch.zeros(24, 128, dtype=torch.uint8)), 128, 64)
    with pytest.raises(ValueError, match="got N=16, K=128, group_size=32"):
        to_mma_fragments(pack(torch.zeros(16, 128, dtype=torch.uint8)), 128, 32)
