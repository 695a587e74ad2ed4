"""`inferline bench --workload mixed`: N requests of mixed output lengths, all submitted at t=0, run once
with static and once with in-flight batching (one freshly loaded engine per mode), per-request latency
and time to first token recorded, so the two batchings' throughput and tail latency can be compared."""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any

import structlog
import torch
import typer

from engine import Engine, EngineConfig, InvalidParameterError, SamplingParams
from inferline.cli.bench_cases import Case, random_prompts
from inferline.cli.bench_mixed_report import MixedRun, ModeResult, mixed_comparison, mixed_table
from inferline.cli.device import synchronize
from inferline.memory import GIB, PeakMemoryTracker, release_memory

log = structlog.get_logger(__name__)

BATCHINGS = ("static", "inflight")
# How output lengths are drawn from LO..HI. uniform: every length equally likely. geometric: each token after
# the first LO ends the request with one fixed probability, as a sampled EOS does, so short answers are common
# and long ones rare (a long tail, as real chat traffic has), capped at HI; the probability gives a mean of
# LO + (HI - LO) / 4 before the cap.
OUTPUT_LEN_DISTS = ("uniform", "geometric")


@dataclass(frozen=True)
class MixedSpec:
    """What the mixed workload runs: validated options."""

    requests: int
    input_len: int
    output_lo: int
    output_hi: int
    batchings: tuple[str, ...]
    max_batch_size: int
    output_dist: str = "uniform"

    @property
    def max_seq_len(self) -> int:
        return self.input_len + self.output_hi


def parse_output_len_range(text: str) -> tuple[int, int]:
    """"16,512" -> (16, 512); a single number N means N,N."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise InvalidParameterError("--output-len-range", f"expected LO,HI like 16,512, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2:
        raise InvalidParameterError("--output-len-range", f"expected LO,HI like 16,512, got {text!r}")
    lo, hi = values
    if lo < 1:
        raise InvalidParameterError("--output-len-range", f"LO must be >= 1, got {lo}")
    if lo > hi:
        raise InvalidParameterError("--output-len-range", f"LO must be <= HI, got {lo} > {hi}")
    return lo, hi


def parse_batchings(text: str) -> tuple[str, ...]:
    """"static,inflight" -> ("static", "inflight"), in the order given, without repeats."""
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [n for n in names if n not in BATCHINGS]
    if unknown or not names:
        raise InvalidParameterError("--batching", f"expected a comma-separated subset of {','.join(BATCHINGS)}, "
                                                  f"got {text!r}")
    return names


DEFAULT_REQUESTS, DEFAULT_INPUT_LEN, DEFAULT_OUTPUT_LEN_RANGE, DEFAULT_MAX_BATCH_SIZE = 256, 128, "16,512", 64


def make_spec(requests: int | None, input_len: int | None, output_len_range: str | None, batching: str | None,
              max_batch_size: int | None, output_dist: str | None = None) -> MixedSpec:
    """The options as given (None: not given, so the default), checked."""
    requests = DEFAULT_REQUESTS if requests is None else requests
    input_len = DEFAULT_INPUT_LEN if input_len is None else input_len
    max_batch_size = DEFAULT_MAX_BATCH_SIZE if max_batch_size is None else max_batch_size
    for option, value in (("--requests", requests), ("--input-len", input_len), ("--max-batch-size", max_batch_size)):
        if value < 1:
            raise InvalidParameterError(option, f"must be >= 1, got {value}")
    lo, hi = parse_output_len_range(DEFAULT_OUTPUT_LEN_RANGE if output_len_range is None else output_len_range)
    output_dist = OUTPUT_LEN_DISTS[0] if output_dist is None else output_dist
    if output_dist not in OUTPUT_LEN_DISTS:
        raise InvalidParameterError("--output-len-dist", f"must be one of {', '.join(OUTPUT_LEN_DISTS)}, "
                                                         f"got {output_dist!r}")
    return MixedSpec(requests, input_len, lo, hi, parse_batchings(",".join(BATCHINGS) if batching is None else batching),
                     max_batch_size, output_dist)


def draw_output_lens(n: int, lo: int, hi: int, seed: int, dist: str = "uniform") -> list[int]:
    """Output lengths in [lo, hi] drawn as OUTPUT_LEN_DISTS describes, reproducible for a seed; every batching
    mode gets the same."""
    if dist == "uniform" or lo == hi:
        rng = random.Random(f"{seed}-mixed-output-{n}-{lo}-{hi}")  # str seeds are stable across runs
        return [rng.randint(lo, hi) for _ in range(n)]
    rng = random.Random(f"{seed}-mixed-output-{dist}-{n}-{lo}-{hi}")
    # Extra tokens ~ Geometric(p) on {0, 1, ...} with mean (1 - p) / p = (hi - lo) / 4, by inversion.
    p = 1 / (1 + (hi - lo) / 4)
    return [min(hi, lo + int(math.log(1 - rng.random()) / math.log(1 - p))) for _ in range(n)]


def warmup_requests(spec: MixedSpec, vocab_size: int, tokenizer: Any, seed: int) -> tuple[list[list[int]], list[int]]:
    """Up to max_batch_size short requests, lengths 1, 2, ... so decode steps run at every batch size from
    the largest down to 1 (compilation, graph capture and autotuning per shape happen here, untimed).
    Their prompts differ from the timed ones (a prefix cache must not get a head start)."""
    k = min(spec.max_batch_size, spec.requests)
    prompts = random_prompts(Case(k, spec.input_len, 0), vocab_size, tokenizer, f"warmup-{seed}")  # type: ignore[arg-type]
    return prompts, [min(1 + i, spec.output_hi) for i in range(k)]


def run_workload(engine: Engine, device: str, prompts: list[list[int]], output_lens: list[int]) -> MixedRun:
    """Submit every request at t0, step until all finish; per request the first-token and finish times."""
    ids = [f"mixed-{i}" for i in range(len(prompts))]
    index = {rid: i for i, rid in enumerate(ids)}
    first = [float("nan")] * len(ids)
    done = [float("nan")] * len(ids)
    generated = [0] * len(ids)
    synchronize(device)
    t0 = time.perf_counter()
    for rid, prompt, n in zip(ids, prompts, output_lens):
        # min_tokens == max_tokens: exactly n tokens, EOS masked (as engine_bench does).
        engine.add_request(rid, prompt, SamplingParams(max_tokens=n, min_tokens=n, detokenize=False))
    pending, steps = set(ids), 0
    while pending:
        outputs = engine.step()  # returns once its outputs are on the host: no device sync (see engine_bench)
        steps += 1
        now = time.perf_counter() - t0
        if not outputs and not engine.has_unfinished():
            raise RuntimeError(f"engine went idle with {len(pending)} benchmark requests unfinished")
        for out in outputs:
            i = index[out.request_id]
            if out.new_token_ids and generated[i] == 0:
                first[i] = now
            generated[i] += len(out.new_token_ids)
            if out.finished:
                done[i] = now
                pending.discard(out.request_id)
    if generated != list(output_lens):
        raise RuntimeError(f"expected output lengths {list(output_lens)}, got {generated}")
    return MixedRun(makespan_s=max(done), latencies_s=done, ttfts_s=first, generated_tokens=generated, steps=steps)


def run_mixed(model: str, model_label: str, device: str, dtype: str | None, spec: MixedSpec, warmup: int, runs: int,
              seed: int, kv_cache_dtype: str = "auto", async_scheduling: bool | None = None) -> dict[str, Any]:
    """Every batching mode on a fresh engine: load, warm up, `runs` timed passes of the same workload.
    Prints a [BENCHMARK] line per mode and the comparison; returns the JSON record."""
    output_lens = draw_output_lens(spec.requests, spec.output_lo, spec.output_hi, seed, spec.output_dist)
    prompts: list[list[int]] = []
    results = []
    torch_device = torch.device(device)
    for batching in spec.batchings:
        with PeakMemoryTracker(torch_device) as memory:
            engine = Engine(EngineConfig(model=model, device=device, dtype=dtype, max_batch_size=spec.max_batch_size,
                                         max_seq_len=spec.max_seq_len, batching=batching,
                                         kv_cache_dtype=kv_cache_dtype, async_scheduling=async_scheduling))
            vocab_size, tokenizer = engine.model_config.vocab_size, engine.tokenizer
            resolved_async = engine.async_scheduling
            if not prompts:  # the same prompts for every mode, from the first engine's vocabulary
                prompts = random_prompts(Case(spec.requests, spec.input_len, 0), vocab_size, tokenizer, seed)
            warm_prompts, warm_lens = warmup_requests(spec, vocab_size, tokenizer, seed)
            for _ in range(warmup):
                run_workload(engine, device, warm_prompts, warm_lens)
            timed = []
            for i in range(runs):
                timed.append(run_workload(engine, device, prompts, output_lens))
                log.info("bench_mixed_run", batching=batching, run=i, makespan_s=round(timed[-1].makespan_s, 3))
            precision = str(engine.dtype).removeprefix("torch.")
            del engine
            peak = memory.checkpoint()
        release_memory(torch_device)
        result = ModeResult("inferline", model_label, device, precision, batching, spec.requests, spec.input_len,
                            spec.output_lo, spec.output_hi, spec.max_batch_size, timed, peak / GIB,
                            spec.output_dist)
        typer.echo(result.benchmark_line())
        results.append(result)
    comparison = mixed_comparison(results)
    typer.echo("\n" + mixed_table(results))
    if comparison is not None:
        typer.echo(f"in-flight / static: throughput {comparison['throughput_ratio']:.2f}x, "
                   f"p99 latency {comparison['p99_latency_ratio']:.2f}x (medians of {runs} runs)")
    return {"workload": "mixed", "model": model, "device": device, "kv_cache_dtype": kv_cache_dtype,
            "async_scheduling": resolved_async, "warmup": warmup, "runs": runs, "seed": seed,
            "requests": spec.requests, "input_len": spec.input_len, "output_len_range": [spec.output_lo, spec.output_hi],
            "output_len_dist": spec.output_dist,
            "max_batch_size": spec.max_batch_size, "batching": list(spec.batchings), "output_lens": output_lens,
            "modes": [r.to_json() for r in results], "comparison": comparison}
