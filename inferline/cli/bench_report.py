"""Benchmark results: the numbers derived from raw timings, TensorRT-LLM-style [BENCHMARK] lines,
the ours-vs-HF comparison table, and the JSON record."""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

from inferline.cli.bench_cases import Case
from inferline.memory import GIB


@dataclass
class CaseTiming:
    """What a side measured for one case: seconds per timed run, time to first token, outputs."""

    latencies_s: list[float]
    ttft_s: float  # median time until every sequence of the batch had its first token
    token_ids: list[list[int]]  # generated ids of the last timed run, one list per prompt
    # Sequences preempted (KV blocks ran out, recomputed later) in each timed run; None where the side has
    # no such scheduler (HF).
    preemptions: list[int] | None = None


@dataclass
class CaseResult:
    engine: str
    model: str
    device: str
    precision: str
    case: Case
    timing: CaseTiming = field(repr=False)
    load_peak_mem_bytes: int
    run_peak_mem_bytes: int

    @property
    def peak_mem_bytes(self) -> int:
        # Counted from before the load, so the load's own transient peak is part of it.
        return max(self.load_peak_mem_bytes, self.run_peak_mem_bytes)

    @property
    def latency_ms(self) -> float:
        return 1e3 * statistics.median(self.timing.latencies_s)

    def percentile_ms(self, q: float) -> float:
        return 1e3 * _percentile(self.timing.latencies_s, q)

    @property
    def ttft_ms(self) -> float:
        return 1e3 * self.timing.ttft_s

    @property
    def generation_time_ms(self) -> float:
        return self.latency_ms - self.ttft_ms

    @property
    def total_generated_tokens(self) -> int:
        return self.case.batch_size * self.case.output_len

    @property
    def tokens_per_sec(self) -> float:
        return self.total_generated_tokens / (self.latency_ms / 1e3)

    @property
    def generation_tokens_per_second(self) -> float:
        # Tokens after the first one, over the time after the first one (the decode phase).
        if self.case.output_len < 2 or self.generation_time_ms <= 0:
            return math.nan
        return self.case.batch_size * (self.case.output_len - 1) / (self.generation_time_ms / 1e3)

    def benchmark_line(self) -> str:
        c = self.case
        fields = [
            ("engine", self.engine), ("model", self.model), ("device", self.device), ("precision", self.precision),
            ("batch_size", c.batch_size), ("input_length", c.input_len), ("output_length", c.output_len),
            ("peak_mem(gb)", f"{self.peak_mem_bytes / GIB:.2f}"),
            ("tokens_per_sec", f"{self.tokens_per_sec:.2f}"),
            ("latency(ms)", f"{self.latency_ms:.1f}"),
            ("percentile95(ms)", f"{self.percentile_ms(95):.1f}"),
            ("percentile99(ms)", f"{self.percentile_ms(99):.1f}"),
            ("ttft(ms)", f"{self.ttft_ms:.1f}"),
            ("generation_time(ms)", f"{self.generation_time_ms:.1f}"),
            ("total_generated_tokens", self.total_generated_tokens),
            ("generation_tokens_per_second", f"{self.generation_tokens_per_second:.2f}"),
        ]
        if self.timing.preemptions is not None:
            fields.append(("preemptions", statistics.median_low(self.timing.preemptions)))
        return "[BENCHMARK] " + " ".join(f"{k} {v}" for k, v in fields)

    def to_json(self) -> dict[str, object]:
        return {
            "engine": self.engine, "model": self.model, "device": self.device, "precision": self.precision,
            **asdict(self.case),
            "peak_mem_gb": self.peak_mem_bytes / GIB,
            "load_peak_mem_gb": self.load_peak_mem_bytes / GIB,
            "run_peak_mem_gb": self.run_peak_mem_bytes / GIB,
            "tokens_per_sec": self.tokens_per_sec,
            "latency_ms": self.latency_ms,
            "percentile95_ms": self.percentile_ms(95),
            "percentile99_ms": self.percentile_ms(99),
            "ttft_ms": self.ttft_ms,
            "generation_time_ms": self.generation_time_ms,
            "total_generated_tokens": self.total_generated_tokens,
            "generation_tokens_per_second": _finite_or_none(self.generation_tokens_per_second),
            "latencies_ms": [1e3 * s for s in self.timing.latencies_s],
            "preemptions": self.timing.preemptions,
        }


@dataclass(frozen=True)
class Comparison:
    ours: CaseResult
    hf: CaseResult

    @property
    def latency_reduction(self) -> float:
        return 1 - self.ours.latency_ms / self.hf.latency_ms

    @property
    def speedup(self) -> float:
        return self.hf.latency_ms / self.ours.latency_ms

    @property
    def memory_reduction(self) -> float:
        return 1 - self.ours.peak_mem_bytes / self.hf.peak_mem_bytes if self.hf.peak_mem_bytes else math.nan

    @property
    def token_match(self) -> float:
        """Share of generated positions where both engines picked the same token (a sanity check
        that they did the same work; float rounding can flip near-ties, so 1.0 is not guaranteed)."""
        pairs = [(a, b) for x, y in zip(self.ours.timing.token_ids, self.hf.timing.token_ids) for a, b in zip(x, y)]
        return sum(a == b for a, b in pairs) / len(pairs) if pairs else math.nan

    def to_json(self) -> dict[str, object]:
        return {"model": self.ours.model, **asdict(self.ours.case), "latency_ms": self.ours.latency_ms,
                "hf_latency_ms": self.hf.latency_ms,
                "latency_reduction": self.latency_reduction, "speedup": self.speedup,
                "tokens_per_sec": self.ours.tokens_per_sec, "hf_tokens_per_sec": self.hf.tokens_per_sec,
                "peak_mem_gb": self.ours.peak_mem_bytes / GIB, "hf_peak_mem_gb": self.hf.peak_mem_bytes / GIB,
                "memory_reduction": _finite_or_none(self.memory_reduction),
                "token_match": _finite_or_none(self.token_match)}


def comparison_table(rows: list[Comparison]) -> str:
    header = ("model", "batch", "in", "out", "latency ms (ours/hf)", "lat. red.", "speedup", "tok/s (ours/hf)",
              "peak GiB (ours/hf)", "mem red.", "same tokens")
    body = [(r.ours.model, str(r.ours.case.batch_size), str(r.ours.case.input_len), str(r.ours.case.output_len),
             f"{r.ours.latency_ms:.1f} / {r.hf.latency_ms:.1f}", f"{100 * r.latency_reduction:+.1f}%",
             f"{r.speedup:.2f}x", f"{r.ours.tokens_per_sec:.1f} / {r.hf.tokens_per_sec:.1f}",
             f"{r.ours.peak_mem_bytes / GIB:.2f} / {r.hf.peak_mem_bytes / GIB:.2f}",
             f"{100 * r.memory_reduction:+.1f}%", f"{100 * r.token_match:.0f}%") for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join(cell.rjust(w) for cell, w in zip(line, widths))

    return "\n".join([fmt(header), fmt(tuple("-" * w for w in widths)), *map(fmt, body)])


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), without needing numpy."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no NaN
