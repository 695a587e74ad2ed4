"""One step's model inputs, built on the host from the scheduled batch: flat numpy arrays that the
runner copies to the device (eagerly, or into a CUDA graph's static buffers)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.layers.attention.metadata import FreshPrompts
from engine.scheduler import ScheduledSequence
from engine.transfer import to_device


@dataclass
class StepInputs:
    input_ids: np.ndarray  # [tokens] int64
    positions: np.ndarray  # [tokens] int64
    slot_mapping: np.ndarray  # [tokens] int64
    context_lens: np.ndarray  # [seqs] int32: cached + new tokens
    query_start: np.ndarray  # [seqs + 1] int32
    logits_index: np.ndarray  # [sampling seqs] int64: the flattened token whose logits are sampled
    tables: list[list[int]]  # each sequence's blocks, as far as this step's context reaches
    max_query_len: int
    max_context_len: int
    # Tokens still on the device (PENDING in input_ids): input_ids[carried_rows[i]] is row
    # carried_from[i] of the previous step's sampled tokens (async scheduling).
    carried_rows: np.ndarray  # [carried] int64
    carried_from: np.ndarray  # [carried] int64
    leading_decodes: int = 0  # sequences at the batch's start with one new token each (AttentionMetadata)
    fresh: FreshPrompts | None = None  # the prompts at the batch's end with nothing cached (AttentionMetadata)

    @property
    def num_seqs(self) -> int:
        return len(self.tables)

    @classmethod
    def build(cls, batch: list[ScheduledSequence], block_size: int) -> StepInputs:
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        context_lens: list[int] = []
        query_lens: list[int] = []
        logits_index: list[int] = []
        tables: list[list[int]] = []
        carried_rows: list[int] = []
        carried_from: list[int] = []
        for item in batch:
            seq, start, n = item.seq, item.seq.num_computed_tokens, item.num_tokens
            end = start + n
            table = seq.block_table[:-(-end // block_size)]
            if seq.pending_row is not None and start <= seq.num_tokens - 1 < end:
                carried_rows.append(len(ids) + seq.num_tokens - 1 - start)
                carried_from.append(seq.pending_row)
            if n == 1:  # decode: most of a large batch, so the cheap path
                ids.append(seq.token_at(start))
                positions.append(start)
                slots.append(table[start // block_size] * block_size + start % block_size)
            else:
                span = range(start, end)
                ids.extend(seq.token_at(p) for p in span)
                positions.extend(span)
                slots.extend(table[p // block_size] * block_size + p % block_size for p in span)
            context_lens.append(end)
            query_lens.append(n)
            tables.append(table)
            if item.samples:
                logits_index.append(len(ids) - 1)
        max_query_len = max(query_lens)
        # Counted only for a mixed step: a decode-only one (most steps) is all decodes.
        leading_decodes = len(query_lens) if max_query_len == 1 else next(
            i for i, n in enumerate(query_lens) if n != 1)
        query_start = np.concatenate([[0], np.cumsum(query_lens)]).astype(np.int32)
        fresh = None if max_query_len == 1 else fresh_prompts(query_lens, context_lens, query_start, leading_decodes)
        return cls(input_ids=np.array(ids, dtype=np.int64), positions=np.array(positions, dtype=np.int64),
                   slot_mapping=np.array(slots, dtype=np.int64), context_lens=np.array(context_lens, dtype=np.int32),
                   query_start=query_start,
                   logits_index=np.array(logits_index, dtype=np.int64), tables=tables,
                   max_query_len=max_query_len, max_context_len=max(context_lens),
                   leading_decodes=leading_decodes, fresh=fresh,
                   carried_rows=np.array(carried_rows, dtype=np.int64),
                   carried_from=np.array(carried_from, dtype=np.int64))

    def fill_carried(self, input_ids: torch.Tensor, previous_tokens: torch.Tensor | None,
                     rows: np.ndarray | None = None) -> None:
        """Write the carried tokens into input_ids (on the device, after the host ids are copied in).
        rows: where the carried tokens go in input_ids, if not at carried_rows (a graph's padded layout)."""
        rows = self.carried_rows if rows is None else rows
        k = len(rows)
        if k == 0:
            return
        if previous_tokens is None:
            raise RuntimeError("this step reads tokens of a previous step, but none was passed")
        if np.array_equal(rows, self.carried_from) and rows[-1] == k - 1:
            # The steady decode state (the same sequences in the same order): one device copy.
            input_ids[:k].copy_(previous_tokens[:k])
            return
        index = to_device(np.stack([rows, self.carried_from]), input_ids.device)
        input_ids[index[0]] = previous_tokens[index[1]]

    def block_tables(self) -> np.ndarray:
        """[seqs, longest table] int32, rows padded with block 0 (never read: context_lens bound every read)."""
        out = np.zeros((len(self.tables), max(len(t) for t in self.tables)), dtype=np.int32)
        self.write_block_tables(out)
        return out

    def write_block_tables(self, out: np.ndarray) -> None:
        """Each sequence's table into the start of its row of out ([seqs, >= longest table]); the rest of
        the row is left as it is."""
        for row, table in zip(out, self.tables):
            row[:len(table)] = table


def fresh_prompts(query_lens: list[int], context_lens: list[int], query_start: np.ndarray,
                  leading_decodes: int) -> FreshPrompts | None:
    """The sequences at the batch's end, after its leading decodes, whose whole context is this step's."""
    seqs = len(query_lens)
    first = seqs
    while first > leading_decodes and context_lens[first - 1] == query_lens[first - 1]:
        first -= 1
    if first == seqs:
        return None
    return FreshPrompts(int(query_start[first]), tuple(query_lens[first:]))
