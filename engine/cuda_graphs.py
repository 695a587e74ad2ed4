"""Steps replayed from CUDA graphs. A 7B forward is ~350 kernel launches; issued one by one from Python
they take longer than the GPU needs to run them for a decode step or a short prompt (measured on an
H200: a 128-token prefill 13.4 ms eager against 4.9 ms of GPU work).

Three families, each captured once per bucket over static input buffers:
- decode: every sequence adds one token; buckets of batch size.
- prefill: a single sequence adds a chunk of tokens (a new prompt, or the next chunk of one); buckets of
  chunk length, up to MAX_PREFILL_TOKENS (longer chunks are GPU-bound, so eager costs nothing there).
- mixed: decodes and then one prompt chunk, the step in-flight batching runs whenever a request joins a
  running batch; buckets of (batch size, chunk length). One forward reads the weights once for both, where
  a decode replay and a prefill replay read them twice (at batch 64 a 7B decode step is ~5 ms of weights).
A step copies its inputs in (one copy: engine/graph_inputs.py) and pads to the bucket: padding tokens
store nothing (slot -1) and belong to padding sequences with no context, which attend to nothing."""
from __future__ import annotations

import bisect
import time
from typing import Iterable

import numpy as np
import structlog
import torch

from engine.graph_inputs import GraphInputs
from engine.layers.attention import AttentionMetadata
from engine.step_inputs import StepInputs
from engine.transfer import to_device

log = structlog.get_logger(__name__)

MAX_PREFILL_TOKENS = 512


def decode_batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16 (padding costs at most 15 rows), up to max_batch_size."""
    sizes = [s for s in (1, 2, 4, 8) if s < max_batch_size] + list(range(16, max_batch_size, 16))
    return sizes + [max_batch_size]


def prefill_lengths(max_tokens: int) -> list[int]:
    """Powers of two from 16 up to max_tokens (at most MAX_PREFILL_TOKENS)."""
    top = min(max_tokens, MAX_PREFILL_TOKENS)
    return [n for n in (16, 32, 64, 128, 256, 512) if n < top] + [top] if top >= 2 else []


def _bucket(sizes: list[int], n: int) -> int:
    """The smallest of the ascending bucket sizes that holds n (the caller checked that one does)."""
    return sizes[bisect.bisect_left(sizes, n)]


class StepGraphs:
    def __init__(self, model: torch.nn.Module, kv_caches: list[torch.Tensor], max_batch_size: int,
                 max_prefill_tokens: int, max_blocks: int, max_context_len: int):
        self.model = model
        self.kv_caches = kv_caches
        self.batch_sizes = decode_batch_sizes(max_batch_size)
        self.prefill_lengths = prefill_lengths(max_prefill_tokens)
        self.max_context_len = max_context_len
        device = kv_caches[0].device
        top_batch, top_chunk = self.batch_sizes[-1], max(self.prefill_lengths, default=0)
        tokens, seqs = top_batch + top_chunk, top_batch + 2  # a mixed step's, the largest
        # Static inputs: every graph reads a prefix of these, loaded by one copy a step.
        self.inputs = GraphInputs(tokens, seqs, max_blocks, device)
        self.decode_query_start = torch.arange(seqs + 1, dtype=torch.int32, device=device)
        self._graphs: dict[tuple[str, int, int], torch.cuda.CUDAGraph] = {}
        self._logits: dict[tuple[str, int, int], torch.Tensor] = {}
        # The mixed graphs' logits, one buffer for all (a buffer per graph would hold ~ a GB of float32 rows
        # at 256 sequences and a 128K vocabulary); made by the first, largest mixed forward, before its capture.
        self._mixed_logits: torch.Tensor | None = None

    def decode_graph(self, batch_size: int) -> tuple[int, torch.cuda.CUDAGraph]:
        """The captured decode graph that serves batch_size sequences, and its bucket (profiling)."""
        bucket = _bucket(self.batch_sizes, batch_size)
        return bucket, self._graphs["decode", bucket, 0]

    def capture(self) -> None:
        shapes = [("prefill", 0, n) for n in self.prefill_lengths] + [("decode", b, 0) for b in self.batch_sizes] + \
                 [("mixed", b, n) for b in self.batch_sizes for n in self.prefill_lengths]
        # Most tokens first: smaller graphs then reuse the memory pool the largest ones reserved.
        shapes.sort(key=lambda shape: shape[1] + shape[2], reverse=True)
        pool = torch.cuda.graph_pool_handle()
        start = time.perf_counter()
        for shape in shapes:
            if shape[0] != "decode":
                self.inputs.fill_bucket_layout(shape[1], shape[2])
            self._forward(*shape)  # compiles and autotunes this shape's kernels outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._logits[shape] = self._forward(*shape)
            self._graphs[shape] = graph
        torch.cuda.synchronize()
        log.info("cuda_graphs_captured", decode_batch_sizes=self.batch_sizes, prefill_lengths=self.prefill_lengths,
                 graphs=len(shapes), seconds=round(time.perf_counter() - start, 1))

    def covers(self, chunk_lengths: Iterable[int]) -> bool:
        """Whether single-sequence prefill graphs exist for chunks of these lengths."""
        top = self.prefill_lengths[-1] if self.prefill_lengths else 0
        return all(n <= top for n in chunk_lengths)

    def covers_mixed(self, decodes: int, chunk_length: int) -> bool:
        """Whether a mixed graph serves `decodes` decodes followed by one chunk of chunk_length tokens."""
        return decodes <= self.batch_sizes[-1] and self.covers([chunk_length])

    def run(self, inputs: StepInputs, previous_tokens: torch.Tensor | None = None) -> torch.Tensor | None:
        """Logits [sampling sequences, vocab] float32 if a captured graph covers this step, else None.
        previous_tokens: the previous step's sampled tokens, where this step carries some (async scheduling)."""
        n = len(inputs.input_ids)
        if inputs.max_query_len == 1 and inputs.num_seqs <= self.batch_sizes[-1]:
            bucket = _bucket(self.batch_sizes, n)
            self.inputs.load(inputs)
            inputs.fill_carried(self.inputs.input_ids, previous_tokens)
            self._graphs["decode", bucket, 0].replay()
            logits = self._logits["decode", bucket, 0][:n]
            # A one-token chunk of a longer prompt is computed here too but samples nothing.
            return logits if len(inputs.logits_index) == n else logits[to_device(inputs.logits_index, logits.device)]
        if inputs.num_seqs == 1 and self.prefill_lengths and n <= self.prefill_lengths[-1]:
            bucket = _bucket(self.prefill_lengths, n)
            self.inputs.load_chunk_step(inputs, 0, bucket)
            inputs.fill_carried(self.inputs.input_ids, previous_tokens)
            self._graphs["prefill", 0, bucket].replay()
            return self._logits["prefill", 0, bucket][:len(inputs.logits_index)]  # none for a non-final chunk
        d = inputs.leading_decodes
        if inputs.num_seqs == d + 1 and d > 0 and self.covers_mixed(d, n - d):
            return self._run_mixed(inputs, previous_tokens)
        return None

    def _run_mixed(self, inputs: StepInputs, previous_tokens: torch.Tensor | None) -> torch.Tensor:
        n, d = len(inputs.input_ids), inputs.leading_decodes
        b = _bucket(self.batch_sizes, d)
        chunk = _bucket(self.prefill_lengths, n - d)
        self.inputs.load_chunk_step(inputs, b, chunk)
        carried = inputs.carried_rows
        # The chunk's tokens sit b - d rows further on in the graph's layout than in the step's.
        inputs.fill_carried(self.inputs.input_ids, previous_tokens,
                            rows=np.where(carried >= d, carried + b - d, carried))
        self._graphs["mixed", b, chunk].replay()
        logits = self._logits["mixed", b, chunk]  # rows: the b decode slots, then the chunk's last token
        sampled = inputs.logits_index
        if len(sampled) == d + 1 and sampled[-1] == n - 1:  # every decode and the chunk sample
            return logits[:d + 1] if d == b else torch.cat([logits[:d], logits[b:b + 1]])
        rows = np.where(sampled < d, sampled, b)  # the chunk's only sampled token is its last
        return logits[to_device(rows, logits.device)]

    def _forward(self, kind: str, batch: int, chunk: int) -> torch.Tensor:
        i = self.inputs
        if kind == "decode":
            meta = AttentionMetadata(slot_mapping=i.slot_mapping[:batch], block_tables=i.block_tables[:batch],
                                     context_lens=i.context_lens[:batch],
                                     query_start=self.decode_query_start[:batch + 1],
                                     max_query_len=1, max_context_len=self.max_context_len)
            return self.model.compute_logits(self.model(i.input_ids[:batch], i.positions[:batch], self.kv_caches, meta))
        # prefill (batch 0) and mixed: `batch` decodes, then one chunk, then its padding as one more sequence
        tokens, seqs = batch + chunk, batch + 2
        meta = AttentionMetadata(slot_mapping=i.slot_mapping[:tokens], block_tables=i.block_tables[:seqs],
                                 context_lens=i.context_lens[:seqs], query_start=i.query_start[:seqs + 1],
                                 max_query_len=chunk, max_context_len=self.max_context_len, leading_decodes=batch)
        hidden = self.model(i.input_ids[:tokens], i.positions[:tokens], self.kv_caches, meta)
        logits = self.model.compute_logits(hidden[i.logits_rows[:batch + 1]])
        if kind == "prefill":
            return logits
        if self._mixed_logits is None:
            self._mixed_logits = logits.new_empty(self.batch_sizes[-1] + 1, logits.shape[-1])
        out = self._mixed_logits[:batch + 1]
        out.copy_(logits)
        return out
