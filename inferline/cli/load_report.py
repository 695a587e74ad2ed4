"""`inferline load`'s results: the JSON report in the shape of ghz's `-O json` (so one script reads
both), and the short human summary. Durations are integer nanoseconds, as ghz writes Go's
time.Duration; histogram marks are seconds, as ghz's."""
from __future__ import annotations

import datetime
from collections import Counter
from dataclasses import dataclass, field

import grpc

PERCENTAGES = (10, 25, 50, 75, 90, 95, 99)  # ghz's
HISTOGRAM_BUCKETS = 10

# grpc-go's codes.Code.String(): what ghz puts in statusCodeDistribution and its error strings.
GO_CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled", grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument", grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound", grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied", grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition", grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange", grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal", grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss", grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


@dataclass
class Results:
    """What the callers recorded: one latency (ns) and status per finished call."""

    latencies_ns: list[int] = field(default_factory=list)
    ok_latencies_ns: list[int] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    completion_tokens: int = 0
    first_chunk_ns: list[int] = field(default_factory=list)  # streams only: time to the first chunk

    def ok(self, latency_ns: int, completion_tokens: int) -> None:
        self.latencies_ns.append(latency_ns)
        self.ok_latencies_ns.append(latency_ns)
        self.statuses["OK"] += 1
        self.completion_tokens += completion_tokens

    def failed(self, latency_ns: int, code: grpc.StatusCode, details: str) -> None:
        name = GO_CODE_NAMES.get(code, "Unknown")
        self.latencies_ns.append(latency_ns)
        self.statuses[name] += 1
        self.errors[f"rpc error: code = {name} desc = {details}"] += 1

    @property
    def count(self) -> int:
        return len(self.latencies_ns)


def _rank(sorted_values: list[int], percentage: int) -> int:
    """ghz's percentile: the value at 0-based rank floor(p/100*n), one lower when that is whole."""
    ip = percentage / 100 * len(sorted_values)
    di = int(ip)
    if ip == di:
        di -= 1
    return sorted_values[max(di, 0)]


def latency_distribution(sorted_ns: list[int]) -> list[dict[str, int]]:
    if not sorted_ns:
        return []
    return [{"percentage": p, "latency": _rank(sorted_ns, p)} for p in PERCENTAGES]


def histogram(sorted_ns: list[int]) -> list[dict[str, float]]:
    """ghz's: 10 equal buckets from the fastest to the slowest (marks in seconds), plus the slowest."""
    if not sorted_ns:
        return []
    fastest, slowest = sorted_ns[0] / 1e9, sorted_ns[-1] / 1e9
    width = (slowest - fastest) / HISTOGRAM_BUCKETS
    marks = [fastest + width * i for i in range(HISTOGRAM_BUCKETS)] + [slowest]
    counts = [0] * len(marks)
    b = 0
    for value in (v / 1e9 for v in sorted_ns):
        while value > marks[b] and b < len(marks) - 1:
            b += 1
        counts[b] += 1
    n = len(sorted_ns)
    return [{"mark": m, "count": c, "frequency": c / n} for m, c in zip(marks, counts)]


def ghz_report(results: Results, total_ns: int, options: dict, name: str = "") -> dict:
    ok = sorted(results.ok_latencies_ns)
    count = results.count
    total_s = total_ns / 1e9
    report = {
        "name": name,
        "endReason": "normal",
        "options": options,
        "date": datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "count": count,
        "total": total_ns,
        "average": sum(results.latencies_ns) // count if count else 0,
        "fastest": ok[0] if ok else 0,
        "slowest": ok[-1] if ok else 0,
        "rps": count / total_s if total_s > 0 else 0.0,
        "errorDistribution": dict(results.errors),
        "statusCodeDistribution": dict(results.statuses),
        "latencyDistribution": latency_distribution(ok),
        "histogram": histogram(ok),
        # Not in ghz: generated tokens, and for streams the time to the first chunk.
        "inferline": {"completionTokens": results.completion_tokens,
                      "tokensPerSecond": results.completion_tokens / total_s if total_s > 0 else 0.0,
                      "timeToFirstChunkDistribution": latency_distribution(sorted(results.first_chunk_ns))},
    }
    return report


def percentile_ms(report: dict, percentage: int) -> float | None:
    """A percentile of an `inferline load` or ghz `-O json` report in ms (None if absent; ghz leaves the
    distribution null when every request failed)."""
    for row in report.get("latencyDistribution") or []:
        if row and row.get("percentage") == percentage:
            return row["latency"] / 1e6  # Go durations: nanoseconds
    return None


def human_summary(report: dict) -> str:
    def ms(p: int) -> str:
        value = percentile_ms(report, p)
        return "-" if value is None else f"{value:.1f} ms"

    errors = report["count"] - report["statusCodeDistribution"].get("OK", 0)
    limit = (report.get("options") or {}).get("rps") or 0
    lines = [f"requests: {report['count']} in {report['total'] / 1e9:.2f} s = {report['rps']:.1f} requests/s"
             + (f" (--rps {limit})" if limit else "") + f"; {report['inferline']['tokensPerSecond']:.0f} tokens/s",
             f"latency: p50 {ms(50)}, p90 {ms(90)}, p99 {ms(99)}, average {report['average'] / 1e6:.1f} ms, "
             f"slowest {report['slowest'] / 1e6:.1f} ms",
             f"errors: {errors}" + "".join(f"\n  {n} x {msg}" for msg, n in report["errorDistribution"].items())]
    return "\n".join(lines)
