"""Our side of `inferline bench`: the engine driven request by request, so the time to first token
(every sequence of the batch has its first token) is seen without a separate run."""
from __future__ import annotations

import statistics
import time
import uuid

import structlog

from engine import Engine, EngineConfig, SamplingParams
from inferline.cli.bench_report import CaseTiming
from inferline.cli.device import synchronize

log = structlog.get_logger(__name__)


class EngineSide:
    name = "inferline"

    def __init__(self, model: str, device: str, dtype: str | None, max_batch_size: int, max_seq_len: int,
                 max_num_tokens: int, scheduler_policy: str = "max_utilization", kv_cache_dtype: str = "auto",
                 async_scheduling: bool | None = None, kv_cache_free_mem_fraction: float = 0.9):
        # Sized to the largest case: the KV pool holds max_batch_size sequences of max_seq_len tokens, and
        # a step (hence the activation memory reserved for it) holds max_num_tokens.
        self.engine = Engine(EngineConfig(model=model, device=device, dtype=dtype, max_batch_size=max_batch_size,
                                          max_seq_len=max_seq_len, max_num_tokens=max_num_tokens,
                                          scheduler_policy=scheduler_policy, kv_cache_dtype=kv_cache_dtype,
                                          async_scheduling=async_scheduling,
                                          kv_cache_free_mem_fraction=kv_cache_free_mem_fraction))
        self.device = device

    @property
    def precision(self) -> str:
        return str(self.engine.dtype).removeprefix("torch.")

    def measure(self, prompts: list[list[int]], output_len: int, warmup: int, runs: int) -> CaseTiming:
        # min_tokens == max_tokens: exactly output_len tokens, EOS masked out all the way, which is what HF's
        # min_new_tokens does. Not ignore_eos: it would let EOS be sampled (then ignored), so the two engines
        # would decode different tokens wherever EOS is the argmax.
        # Token ids only, as TensorRT-LLM's benchmarks measure the engine (HF generate decodes no text either).
        params = SamplingParams(max_tokens=output_len, min_tokens=output_len, detokenize=False)
        for _ in range(warmup):
            self._run_once(prompts, params)
        latencies, ttfts, token_ids, preemptions = [], [], [], []
        for i in range(runs):
            preempted_before = self.engine.stats().preempted
            latency, ttft, token_ids = self._run_once(prompts, params)
            latencies.append(latency)
            ttfts.append(ttft)
            preemptions.append(self.engine.stats().preempted - preempted_before)
            log.debug("bench_run", engine=self.name, run=i, latency_ms=round(1e3 * latency, 1),
                      preemptions=preemptions[-1])
        return CaseTiming(latencies, statistics.median(ttfts), token_ids, preemptions)

    def _run_once(self, prompts: list[list[int]], params: SamplingParams) -> tuple[float, float, list[list[int]]]:
        engine = self.engine
        ids = [f"bench-{uuid.uuid4().hex}" for _ in prompts]
        tokens: dict[str, list[int]] = {rid: [] for rid in ids}
        first: dict[str, float] = {}
        synchronize(self.device)
        start = time.perf_counter()
        for rid, prompt in zip(ids, prompts):
            engine.add_request(rid, prompt, params)
        pending = set(ids)
        while pending:
            # No device sync here: step() returns once its outputs are on the host, and a sync would stall
            # the step it launched ahead (async scheduling).
            outputs = engine.step()
            now = time.perf_counter()
            if not outputs and not engine.has_unfinished():
                raise RuntimeError(f"engine went idle with {len(pending)} benchmark requests unfinished")
            for out in outputs:
                first.setdefault(out.request_id, now)
                tokens[out.request_id] += out.new_token_ids
                if out.finished:
                    pending.discard(out.request_id)
        end = time.perf_counter()
        generated = [tokens[rid] for rid in ids]
        if any(len(t) != params.max_tokens for t in generated):
            raise RuntimeError(f"expected {params.max_tokens} tokens per sequence, got {[len(t) for t in generated]}")
        return end - start, max(first.values()) - start, generated

    def close(self) -> None:
        del self.engine
