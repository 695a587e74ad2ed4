from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Where this step's tokens sit, built once per step by the model runner and shared by all layers.

    Tokens of one sequence are contiguous in the flattened batch, sequences in scheduling order.
    """

    slot_mapping: torch.Tensor  # [tokens] int64: cache slot (block * block_size + offset) of each new token
    block_tables: torch.Tensor  # [seqs, max_blocks] int64: each sequence's blocks, padded with 0
    query_index: torch.Tensor  # [seqs, max_query_len] int64: flattened-token index of each query, padded with 0
    query_valid: torch.Tensor  # [seqs, max_query_len] bool: which entries of query_index are real
    attn_mask: torch.Tensor  # [seqs, 1, max_query_len, max_context_len] bool: key visible to query
    key_valid: torch.Tensor  # [seqs, max_context_len, 1, 1] bool: slot holds one of the sequence's tokens
    max_context_len: int  # longest context (cached + new tokens) of any sequence this step
