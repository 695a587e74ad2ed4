"""The static input buffers that captured step graphs read, laid out in one device buffer so that a
step's inputs arrive in one host-to-device copy. Copied one by one (ids, positions, slots, context
lengths, block tables: five copies, and a device-to-device one for the strided tables) they took ~6 us
of an H100's time a decode step plus the gaps between them (bench/step_timeline.py).

Layout, int64 words: input_ids, positions, slot_mapping [tokens] each, the prefill's last token [1];
then int32 words: context_lens [seqs], the prefill's query_start [3], block_tables [seqs, max_blocks].
Every array starts on a 16-byte boundary, as separate allocations would: Triton specializes its kernels
on that alignment (vectorized loads). A step copies the prefix that ends with its own block-table rows;
rows past them keep stale tables, never read (their context length is 0)."""
from __future__ import annotations

import numpy as np
import torch

from engine.step_inputs import StepInputs
from engine.transfer import copy_into


class GraphInputs:
    def __init__(self, tokens: int, seqs: int, max_blocks: int, device: torch.device):
        self.tokens, self.max_blocks = tokens, max_blocks
        self._stride = t = _align(tokens, 2)  # int64 words between the token arrays
        self._int32_at = 2 * (3 * t + 2)  # in int32 words, after the last token (and padding)
        self._query_start_at = _align(seqs, 4)  # int32 words after _int32_at
        self._tables_at = self._query_start_at + 4
        self.buffer = torch.zeros(self._words64(seqs), dtype=torch.long, device=device)
        self.input_ids = self.buffer[:tokens]
        self.positions = self.buffer[t:t + tokens]
        self.slot_mapping = self.buffer[2 * t:2 * t + tokens]
        self.prefill_last_token = self.buffer[3 * t:3 * t + 1]
        int32 = self.buffer.view(torch.int32)[self._int32_at:]
        self.context_lens = int32[:seqs]
        self.prefill_query_start = int32[self._query_start_at:self._query_start_at + 3]
        self.block_tables = int32[self._tables_at:self._tables_at + seqs * max_blocks].view(seqs, max_blocks)
        self.slot_mapping.fill_(-1)

    def _words64(self, table_rows: int) -> int:
        """int64 words from the start through block-table row table_rows - 1."""
        return -(-(self._int32_at + self._tables_at + table_rows * self.max_blocks) // 2)

    def load(self, inputs: StepInputs, prefill_bucket: int | None = None) -> None:
        """Queue one copy of the step's inputs; padding tokens get slot -1 (they store nothing), padding
        sequences context length 0. prefill_bucket: also the prefill graph's query_start and last token."""
        n, s, t = len(inputs.input_ids), inputs.num_seqs, self._stride
        host = np.zeros(self._words64(s), dtype=np.int64)
        host[:n] = inputs.input_ids
        host[t:t + n] = inputs.positions
        host[2 * t:2 * t + n] = inputs.slot_mapping
        host[2 * t + n:2 * t + self.tokens] = -1
        int32 = host.view(np.int32)[self._int32_at:]
        int32[:s] = inputs.context_lens
        if prefill_bucket is not None:
            host[3 * t] = n - 1
            int32[self._query_start_at:self._query_start_at + 3] = (0, n, prefill_bucket)
        tables = int32[self._tables_at:self._tables_at + s * self.max_blocks]
        inputs.write_block_tables(tables.reshape(s, self.max_blocks))
        copy_into(self.buffer[:len(host)], host)


def _align(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
