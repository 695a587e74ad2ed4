"""Results of the mixed workload (`inferline bench --workload mixed`): per-run request latencies, the
medians over runs, TensorRT-LLM-style [BENCHMARK] lines, the static vs in-flight table, the JSON record."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from inferline.cli.bench_report import _percentile

LATENCY_PERCENTILES = (50, 90, 99)
TTFT_PERCENTILES = (50, 99)


@dataclass
class MixedRun:
    """One timed pass over the workload; times in seconds from t0, when every request was submitted."""

    makespan_s: float  # until the last request finished
    latencies_s: list[float]  # per request (in submission order): its finish time
    ttfts_s: list[float]  # per request: when its first token came back
    generated_tokens: list[int]  # per request: tokens it generated (its drawn output length)
    steps: int  # engine.step() calls

    @property
    def tokens_per_sec(self) -> float:
        return sum(self.generated_tokens) / self.makespan_s

    def latency_ms(self, q: float) -> float:
        return 1e3 * _percentile(self.latencies_s, q)

    def ttft_ms(self, q: float) -> float:
        return 1e3 * _percentile(self.ttfts_s, q)

    def to_json(self) -> dict[str, Any]:
        return {"makespan_ms": 1e3 * self.makespan_s, "tokens_per_sec": self.tokens_per_sec, "steps": self.steps,
                "generated_tokens": self.generated_tokens,
                "latencies_ms": [1e3 * s for s in self.latencies_s], "ttfts_ms": [1e3 * s for s in self.ttfts_s]}


@dataclass
class ModeResult:
    """One batching mode: every timed run, reported as the median over runs of each statistic."""

    engine: str
    model: str
    device: str
    precision: str
    batching: str
    requests: int
    input_len: int
    output_lo: int
    output_hi: int
    max_batch_size: int
    runs: list[MixedRun] = field(repr=False)
    peak_mem_gb: float
    output_dist: str = "uniform"  # how the output lengths were drawn (bench_mixed.OUTPUT_LEN_DISTS)

    def _median(self, value: Any) -> float:
        return statistics.median(value(r) for r in self.runs)

    @property
    def makespan_ms(self) -> float:
        return 1e3 * self._median(lambda r: r.makespan_s)

    @property
    def tokens_per_sec(self) -> float:
        return self._median(lambda r: r.tokens_per_sec)

    def latency_ms(self, q: float) -> float:
        return self._median(lambda r: r.latency_ms(q))

    def ttft_ms(self, q: float) -> float:
        return self._median(lambda r: r.ttft_ms(q))

    @property
    def total_generated_tokens(self) -> int:
        return sum(self.runs[0].generated_tokens)

    def benchmark_line(self) -> str:
        fields: list[tuple[str, object]] = [
            ("engine", self.engine), ("model", self.model), ("device", self.device), ("precision", self.precision),
            ("workload", "mixed"), ("batching", self.batching), ("requests", self.requests),
            ("max_batch_size", self.max_batch_size), ("input_length", self.input_len),
            ("output_length_min", self.output_lo), ("output_length_max", self.output_hi),
            ("output_length_dist", self.output_dist),
            ("peak_mem(gb)", f"{self.peak_mem_gb:.2f}"),
            ("makespan(ms)", f"{self.makespan_ms:.1f}"),
            ("tokens_per_sec", f"{self.tokens_per_sec:.2f}"),
            *((f"latency_p{q}(ms)", f"{self.latency_ms(q):.1f}") for q in LATENCY_PERCENTILES),
            ("latency_max(ms)", f"{self.latency_ms(100):.1f}"),
            *((f"ttft_p{q}(ms)", f"{self.ttft_ms(q):.1f}") for q in TTFT_PERCENTILES),
            ("total_generated_tokens", self.total_generated_tokens),
        ]
        return "[BENCHMARK] " + " ".join(f"{k} {v}" for k, v in fields)

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine, "model": self.model, "device": self.device, "precision": self.precision,
            "batching": self.batching, "peak_mem_gb": self.peak_mem_gb,
            "makespan_ms": self.makespan_ms, "tokens_per_sec": self.tokens_per_sec,
            "latency_ms": {**{f"p{q}": self.latency_ms(q) for q in LATENCY_PERCENTILES}, "max": self.latency_ms(100)},
            "ttft_ms": {f"p{q}": self.ttft_ms(q) for q in TTFT_PERCENTILES},
            "total_generated_tokens": self.total_generated_tokens,
            "runs": [r.to_json() for r in self.runs],
        }


def mixed_comparison(results: list[ModeResult]) -> dict[str, float] | None:
    """In-flight relative to static (None unless both ran): throughput ratio (higher is better for
    in-flight) and latency ratios (lower is better)."""
    by_mode = {r.batching: r for r in results}
    if not {"static", "inflight"} <= by_mode.keys():
        return None
    static, inflight = by_mode["static"], by_mode["inflight"]
    return {
        "throughput_ratio": inflight.tokens_per_sec / static.tokens_per_sec,
        "makespan_ratio": inflight.makespan_ms / static.makespan_ms,
        **{f"p{q}_latency_ratio": inflight.latency_ms(q) / static.latency_ms(q) for q in LATENCY_PERCENTILES},
        **{f"p{q}_ttft_ratio": inflight.ttft_ms(q) / static.ttft_ms(q) for q in TTFT_PERCENTILES},
    }


def mixed_table(results: list[ModeResult]) -> str:
    header = ("batching", "makespan s", "tok/s", "latency p50/p90/p99/max ms", "ttft p50/p99 ms", "peak GiB")
    body = [(r.batching, f"{r.makespan_ms / 1e3:.2f}", f"{r.tokens_per_sec:.1f}",
             " / ".join(f"{r.latency_ms(q):.0f}" for q in (*LATENCY_PERCENTILES, 100)),
             " / ".join(f"{r.ttft_ms(q):.0f}" for q in TTFT_PERCENTILES), f"{r.peak_mem_gb:.2f}") for r in results]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths))
                     for line in [header, tuple("-" * w for w in widths), *body])
