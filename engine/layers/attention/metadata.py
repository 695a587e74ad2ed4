from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class FreshPrompts:
    """The sequences at a batch's end whose caches held nothing before this step (a prompt's first chunk,
    or all of it): their keys are this step's own, contiguous in the flattened batch, so a backend may
    attend them without the block tables (prompt_attention.py). Host ints, so using them needs no sync."""

    first_token: int  # where the first of them starts in the flattened batch
    lens: tuple[int, ...]  # each one's new tokens, in batch order (the batch's last len(lens) sequences)

    @property
    def seqs(self) -> int:
        return len(self.lens)


@dataclass
class AttentionMetadata:
    """Where this step's tokens sit, built once per step by the model runner and shared by all layers.

    Tokens of one sequence are contiguous in the flattened batch, sequences in scheduling order. Every
    tensor is on the model's device and none needs a host sync to use, so a decode step built from
    these can be captured in a CUDA graph (the Python ints are then fixed by the capture).
    """

    # [tokens] int64: cache slot (block * block_size + offset) of each new token; -1: padding
    slot_mapping: torch.Tensor
    block_tables: torch.Tensor  # [seqs, max_blocks] int32: each sequence's blocks, padded with 0
    # [seqs] int32: tokens in each sequence's cache, this step's new ones included; 0: padding
    context_lens: torch.Tensor
    query_start: torch.Tensor  # [seqs + 1] int32: where each sequence's tokens start in the flattened batch
    max_query_len: int  # most new tokens of any sequence this step (1: a decode-only step)
    max_context_len: int  # longest context (cached + new tokens) of any sequence this step
    # How many sequences at the batch's start have one new token each (decodes; the scheduler puts running
    # sequences first): a mixed batch attends those with a decode kernel. 0 claims none.
    leading_decodes: int = 0
    # The fresh prompts at the batch's end (FreshPrompts), None where the step has none or does not say.
    fresh: FreshPrompts | None = None
    # Per-step tensors a backend derives from the above once and reuses in every layer (masks, indices).
    derived: dict[str, object] = field(default_factory=dict)

    @classmethod
    def prefill(cls, block_tables: torch.Tensor, seq_len: int, block_size: int) -> AttentionMetadata:
        """N sequences of seq_len new tokens each on empty caches (calibration and profiling batches)."""
        num_seqs, device = block_tables.shape[0], block_tables.device
        pos = torch.arange(seq_len, device=device)
        slot_mapping = (block_tables[:, pos // block_size].long() * block_size + pos % block_size).flatten()
        return cls(slot_mapping=slot_mapping, block_tables=block_tables.int(),
                   context_lens=torch.full((num_seqs,), seq_len, dtype=torch.int32, device=device),
                   query_start=torch.arange(0, num_seqs * seq_len + 1, seq_len, dtype=torch.int32, device=device),
                   max_query_len=seq_len, max_context_len=seq_len,
                   fresh=FreshPrompts(0, (seq_len,) * num_seqs) if num_seqs and seq_len else None)

    def first_sequences(self, k: int) -> AttentionMetadata:
        """The metadata of the batch's first k sequences."""
        n = int(self.query_start[k])
        seqs = self.block_tables.shape[0]
        fresh = self.fresh
        if fresh is not None:  # those of them among the first k
            kept = k - (seqs - fresh.seqs)
            fresh = FreshPrompts(fresh.first_token, fresh.lens[:kept]) if kept > 0 else None
        return AttentionMetadata(self.slot_mapping[:n], self.block_tables[:k], self.context_lens[:k],
                                 self.query_start[:k + 1], self.max_query_len, self.max_context_len,
                                 min(self.leading_decodes, k), fresh)
