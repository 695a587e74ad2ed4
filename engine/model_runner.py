"""Owns the model weights and the KV pool on one device; turns a scheduled batch into tensors,
runs the model and returns logits for the sequences that sample this step.

Decode steps, single-sequence prefill chunks and decodes joined by a prompt chunk replay CUDA graphs
(engine/cuda_graphs.py); other steps run eagerly."""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch

from engine.cuda_graphs import StepGraphs
from engine.layers.attention import AttentionMetadata, FreshPrompts
from engine.layers.quantization import check_device
from engine.loader import Checkpoint
from engine.models import MODEL_CLASSES
from engine.scheduler import ScheduledSequence
from engine.step_inputs import StepInputs
from engine.transfer import to_device


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


# A step with more new prompt chunks than this runs eagerly: each chunk would be one more replay.
MAX_GRAPHED_CHUNKS = 2


class ModelRunner:
    def __init__(self, model: torch.nn.Module, block_size: int, device: torch.device,
                 kv_caches: list[torch.Tensor] | None = None):
        self.model = model
        self.block_size = block_size
        self.device = device
        # None until attach_kv_caches: the engine sizes the pool after a profiling forward without one.
        self.kv_caches = kv_caches
        self.graphs: StepGraphs | None = None

    def attach_kv_caches(self, kv_caches: list[torch.Tensor]) -> None:
        if self.graphs is not None:
            raise RuntimeError("the KV cache must be attached before CUDA graphs are captured: they hold its pointers")
        self.kv_caches = kv_caches

    @torch.inference_mode()
    def capture_graphs(self, max_batch_size: int, max_num_tokens: int, max_seq_len: int) -> None:
        """Capture decode steps up to max_batch_size sequences and single-sequence prefill chunks
        (CUDA, graph-safe attention only)."""
        self.graphs = StepGraphs(self.model, self.kv_caches, max_batch_size,
                                 max_prefill_tokens=min(max_num_tokens, max_seq_len),
                                 max_blocks=-(-max_seq_len // self.block_size), max_context_len=max_seq_len)
        self.graphs.capture()

    @torch.inference_mode()
    def execute(self, batch: list[ScheduledSequence], previous_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Run one step; returns logits [sampling sequences, vocab] in float32, in batch order.
        previous_tokens: the previous step's sampled tokens (on the device), for sequences whose last
        token is still PENDING on the host (async scheduling)."""
        if self.graphs is not None and (parts := self._graphed_parts(batch)) is not None:
            if len(parts) == 1 and parts[0] == list(range(len(batch))):
                return self.graphs.run(StepInputs.build(batch, self.block_size), previous_tokens)
            # The decodes with the first prompt chunk, and each further chunk, replay their own graphs: two
            # replays cost less than one eager step of ~350 launches (sequences never read each other's
            # cache, so the order is free). Rows are put back in batch order.
            rows: dict[int, torch.Tensor] = {}
            for part in parts:
                # Copied: two chunks of one length replay the same graph, into the same output buffer.
                logits = self.graphs.run(StepInputs.build([batch[i] for i in part], self.block_size),
                                         previous_tokens).clone()
                rows.update(zip((i for i in part if batch[i].samples), logits))
            return torch.stack([rows[i] for i in sorted(rows)]) if rows else logits[:0]
        return self._run_eager(StepInputs.build(batch, self.block_size), previous_tokens)

    def _graphed_parts(self, batch: list[ScheduledSequence]) -> list[list[int]] | None:
        """The batch split into graph-covered parts (the decodes with the first prompt chunk, in that order,
        or apart; each further chunk), or None for eager."""
        decodes = [i for i, item in enumerate(batch) if item.num_tokens == 1]
        chunks = [[i] for i, item in enumerate(batch) if item.num_tokens > 1]
        if len(chunks) > MAX_GRAPHED_CHUNKS or not self.graphs.covers(batch[i].num_tokens for [i] in chunks):
            return None
        if decodes and chunks and self.graphs.covers_mixed(len(decodes), batch[chunks[0][0]].num_tokens):
            return [decodes + chunks[0]] + chunks[1:]
        return ([decodes] if decodes else []) + chunks

    def _run_eager(self, inputs: StepInputs, previous_tokens: torch.Tensor | None) -> torch.Tensor:
        input_ids, positions, meta, logits_index = self._to_device(inputs)
        inputs.fill_carried(input_ids, previous_tokens)
        hidden = self.model(input_ids, positions, self.kv_caches, meta)
        return self.model.compute_logits(hidden[logits_index])

    @torch.inference_mode()
    def profile_activation_bytes(self, num_tokens: int, num_seqs: int, kv_cache_dtype: torch.dtype) -> int:
        """Peak memory (bytes) a forward of num_tokens tokens in num_seqs sequences takes on top of the
        weights, measured by running one on a one-block scratch cache in the pool's dtype (CUDA,
        graph-safe attention only): what the KV pool must leave free."""
        cfg = self.model.cfg
        scratch = torch.empty(2, 1, self.block_size, cfg.num_kv_heads, cfg.head_dim,
                              dtype=kv_cache_dtype, device=self.device)
        num_seqs = max(1, min(num_seqs, num_tokens))
        lens = np.full(num_seqs, num_tokens // num_seqs, dtype=np.int32)
        lens[: num_tokens % num_seqs] += 1
        query_start = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        # Slot -1: nothing is stored; every block table points at the scratch block. Values are garbage,
        # only the shapes (hence the allocations) matter.
        meta = AttentionMetadata(
            slot_mapping=torch.full((num_tokens,), -1, dtype=torch.long, device=self.device),
            block_tables=torch.zeros(num_seqs, 1, dtype=torch.int32, device=self.device),
            context_lens=torch.zeros(num_seqs, dtype=torch.int32, device=self.device),
            query_start=torch.from_numpy(query_start).to(self.device),
            max_query_len=int(lens.max()), max_context_len=int(lens.max()),
            # Fresh prompts, as a prefill step's new ones are: the backend's fresh path is what is measured.
            fresh=FreshPrompts(0, tuple(int(n) for n in lens)))
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        ids = torch.zeros(num_tokens, dtype=torch.long, device=self.device)
        hidden = self.model(ids, torch.zeros_like(ids), [scratch] * len(self.model.layers), meta)
        self.model.compute_logits(hidden[torch.from_numpy(query_start[1:] - 1).to(self.device)])
        peak = torch.cuda.max_memory_allocated(self.device) - before
        del hidden, scratch
        torch.cuda.empty_cache()
        return peak

    def _to_device(self, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor]:
        dev = self.device

        def put(array: np.ndarray) -> torch.Tensor:
            return to_device(array, dev)

        meta = AttentionMetadata(slot_mapping=put(inputs.slot_mapping), block_tables=put(inputs.block_tables()),
                                 context_lens=put(inputs.context_lens), query_start=put(inputs.query_start),
                                 max_query_len=inputs.max_query_len, max_context_len=inputs.max_context_len,
                                 leading_decodes=inputs.leading_decodes, fresh=inputs.fresh)
        return put(inputs.input_ids), put(inputs.positions), meta, put(inputs.logits_index)
