"""Owns the model weights and the KV pool on one device; turns a scheduled batch into tensors,
runs the model and returns logits for the sequences that sample this step."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from engine.layers.attention import AttentionMetadata
from engine.layers.quantization import check_device
from engine.loader import Checkpoint
from engine.models import MODEL_CLASSES
from engine.scheduler import ScheduledSequence


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """New tensors (parameters of modules made inside) default to `dtype`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def load_model(ckpt: Checkpoint, dtype: torch.dtype, device: torch.device, max_positions: int,
               attention_backend: str) -> torch.nn.Module:
    if ckpt.quantization is not None:  # before allocating anything: fp8 on a CPU, say, fails here
        check_device(ckpt.quantization, device)
    # Parameters are created directly on the device in the target dtype: no float32 copy of a 7B model.
    with torch.device(device), default_dtype(dtype):
        model = MODEL_CLASSES[ckpt.config.architecture](ckpt.config, max_positions, attention_backend,
                                                        quantization=ckpt.quantization)
    model.load_weights(ckpt.read_weights())
    for module in model.modules():  # kernels that want their own weight layout make it once, now
        if hasattr(module, "prepare"):
            module.prepare()
    return model.eval()


class ModelRunner:
    def __init__(self, model: torch.nn.Module, kv_caches: list[torch.Tensor], block_size: int, device: torch.device):
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device

    @torch.inference_mode()
    def execute(self, batch: list[ScheduledSequence]) -> torch.Tensor:
        """Run one step; returns logits [sampling sequences, vocab] in float32, in batch order."""
        input_ids, positions, meta, logits_index = self._prepare(batch)
        hidden = self.model(input_ids, positions, self.kv_caches, meta)
        return self.model.compute_logits(hidden[logits_index])

    def _prepare(self, batch: list[ScheduledSequence]):
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_index: list[list[int]] = []
        query_pos: list[list[int]] = []
        logits_index: list[int] = []
        bs = self.block_size
        for item in batch:
            seq, start = item.seq, item.seq.num_computed_tokens
            span = range(start, start + item.num_tokens)
            query_index.append(list(range(len(ids), len(ids) + item.num_tokens)))
            query_pos.append(list(span))
            ids.extend(seq.token_at(p) for p in span)
            positions.extend(span)
            slots.extend(seq.block_table[p // bs] * bs + p % bs for p in span)
            if item.samples:
                logits_index.append(len(ids) - 1)
        max_q = max(len(q) for q in query_index)
        max_ctx = max(p[-1] + 1 for p in query_pos)
        max_blocks = -(-max_ctx // bs)
        tables = [_padded(item.seq.block_table[:max_blocks], max_blocks, 0) for item in batch]
        valid = [_padded([True] * len(q), max_q, False) for q in query_index]
        # Padded query rows get position 0 so their softmax row is never empty; they are dropped after.
        query_pos = [_padded(q, max_q, 0) for q in query_pos]
        query_index = [_padded(q, max_q, 0) for q in query_index]

        dev = self.device
        pos_t = torch.tensor(query_pos, device=dev)
        key_pos = torch.arange(max_ctx, device=dev)
        attn_mask = (key_pos[None, None, :] <= pos_t[:, :, None]).unsqueeze(1)
        context_lens = torch.tensor([item.seq.num_computed_tokens + item.num_tokens for item in batch], device=dev)
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            block_tables=torch.tensor(tables, device=dev),
            query_index=torch.tensor(query_index, device=dev),
            query_valid=torch.tensor(valid, device=dev),
            attn_mask=attn_mask,
            key_valid=(key_pos[None, :] < context_lens[:, None])[:, :, None, None],
            max_context_len=max_ctx,
        )
        return (torch.tensor(ids, device=dev), torch.tensor(positions, device=dev), meta,
                torch.tensor(logits_index, dtype=torch.long, device=dev))


def _padded(values: list, length: int, fill: object) -> list:
    return values + [fill] * (length - len(values))
