"""The static input buffers that captured step graphs read, laid out in one device buffer so that a
step's inputs arrive in one host-to-device copy. Copied one by one (ids, positions, slots, context
lengths, block tables: five copies, and a device-to-device one for the strided tables) they took ~6 us
of an H100's time a decode step plus the gaps between them (bench/step_timeline.py).

Layout, int64 words: input_ids, positions, slot_mapping [tokens] each, logits_rows [seqs] (the hidden rows
a prefill or mixed graph takes logits of); then int32 words: context_lens [seqs], query_start [seqs + 1],
block_tables [seqs, max_blocks]. Every array starts on a 16-byte boundary, as separate allocations would:
Triton specializes its kernels on that alignment (vectorized loads). A step copies the prefix that ends
with its own block-table rows; rows past them keep stale tables, never read (their context length is 0)."""
from __future__ import annotations

import numpy as np
import torch

from engine.step_inputs import StepInputs
from engine.transfer import copy_into


class GraphInputs:
    def __init__(self, tokens: int, seqs: int, max_blocks: int, device: torch.device):
        self.tokens, self.max_blocks = tokens, max_blocks
        self._stride = t = _align(tokens, 2)  # int64 words between the token arrays
        self._rows_at = 3 * t
        self._int32_at = 2 * (self._rows_at + _align(seqs, 2))  # in int32 words
        self._query_start_at = _align(seqs, 4)  # int32 words after _int32_at
        self._tables_at = self._query_start_at + _align(seqs + 1, 4)
        self.buffer = torch.zeros(self._words64(seqs), dtype=torch.long, device=device)
        self.input_ids = self.buffer[:tokens]
        self.positions = self.buffer[t:t + tokens]
        self.slot_mapping = self.buffer[2 * t:2 * t + tokens]
        self.logits_rows = self.buffer[self._rows_at:self._rows_at + seqs]
        int32 = self.buffer.view(torch.int32)[self._int32_at:]
        self.context_lens = int32[:seqs]
        self.query_start = int32[self._query_start_at:self._query_start_at + seqs + 1]
        self.block_tables = int32[self._tables_at:self._tables_at + seqs * max_blocks].view(seqs, max_blocks)
        self.slot_mapping.fill_(-1)

    def _words64(self, table_rows: int) -> int:
        """int64 words from the start through block-table row table_rows - 1."""
        return -(-(self._int32_at + self._tables_at + table_rows * self.max_blocks) // 2)

    def load(self, inputs: StepInputs) -> None:
        """Queue one copy of a decode step's inputs; padding tokens get slot -1 (they store nothing), padding
        sequences context length 0."""
        n, s = len(inputs.input_ids), inputs.num_seqs
        host, int32 = self._host(s)
        self._put_tokens(host, inputs, 0, slice(0, n))
        int32[:s] = inputs.context_lens
        tables = int32[self._tables_at:self._tables_at + s * self.max_blocks]
        inputs.write_block_tables(tables.reshape(s, self.max_blocks))
        copy_into(self.buffer[:len(host)], host)

    def load_chunk_step(self, inputs: StepInputs, decode_bucket: int, chunk_bucket: int) -> None:
        """Queue one copy of a step of d decodes and then one prompt chunk of c tokens (inputs.leading_decodes
        == d, one more sequence; d = 0: a prefill graph's step) in a chunk graph's layout: the decodes in
        tokens and sequences 0 .. d - 1, padding decodes up to decode_bucket, the chunk from token / sequence
        decode_bucket on, its padding tokens up to chunk_bucket as one more sequence (chunk_step_layout)."""
        d, b = inputs.leading_decodes, decode_bucket
        c = len(inputs.input_ids) - d
        host, int32 = self._host(b + 2)
        self._put_tokens(host, inputs, 0, slice(0, d))
        self._put_tokens(host, inputs, b, slice(d, d + c))
        int32[:d] = inputs.context_lens[:d]
        int32[b] = inputs.context_lens[d]
        query_start, rows = chunk_step_layout(b, c, chunk_bucket)
        host[self._rows_at:self._rows_at + len(rows)] = rows
        int32[self._query_start_at:self._query_start_at + len(query_start)] = query_start
        tables = int32[self._tables_at:self._tables_at + (b + 2) * self.max_blocks].reshape(b + 2, self.max_blocks)
        inputs.write_block_tables(tables[:d])
        table = inputs.tables[d]
        tables[b, :len(table)] = table
        copy_into(self.buffer[:len(host)], host)

    def fill_bucket_layout(self, decode_bucket: int, chunk_bucket: int) -> None:
        """query_start and logits rows of a chunk graph's step whose chunk fills its bucket, copied in now:
        what a capture's warm-up and captured forwards run over (a capture copies nothing from the host)."""
        query_start, rows = chunk_step_layout(decode_bucket, chunk_bucket, chunk_bucket)
        self.query_start[:len(query_start)].copy_(torch.from_numpy(query_start))
        self.logits_rows[:len(rows)].copy_(torch.from_numpy(rows))

    def _host(self, table_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The host image of the buffer's prefix through block-table row table_rows - 1: every slot -1, every
        other word 0; and its int32 part."""
        t = self._stride
        host = np.zeros(self._words64(table_rows), dtype=np.int64)
        host[2 * t:2 * t + self.tokens] = -1
        return host, host.view(np.int32)[self._int32_at:]

    def _put_tokens(self, host: np.ndarray, inputs: StepInputs, at: int, part: slice) -> None:
        t, n = self._stride, part.stop - part.start
        host[at:at + n] = inputs.input_ids[part]
        host[t + at:t + at + n] = inputs.positions[part]
        host[2 * t + at:2 * t + at + n] = inputs.slot_mapping[part]


def chunk_step_layout(decode_bucket: int, chunk_tokens: int, chunk_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """query_start [B + 3] and logits rows [B + 1] of B decode slots then one chunk of chunk_tokens tokens
    padded to chunk_bucket: (0, 1, .., B, B + c, B + chunk_bucket) and (0, .., B - 1, B + c - 1), the rows
    whose logits the graph takes (every decode slot, the chunk's last token)."""
    b, c = decode_bucket, chunk_tokens
    query_start = np.array([*range(b + 1), b + c, b + chunk_bucket], dtype=np.int32)
    return query_start, np.array([*range(b), b + c - 1], dtype=np.int64)


def _align(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
