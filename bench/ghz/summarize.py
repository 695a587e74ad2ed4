"""Summarise ghz `-O json` reports (or `inferline load` ones: same shape) as one line each:
requests/s, p50/p99 and errors. Usage: python bench/ghz/summarize.py REPORT.json [...] (with inferline
installed: it reads percentiles as `inferline load` does)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from inferline.cli.load_report import percentile_ms


def summary(report: dict) -> dict:
    ok = (report.get("statusCodeDistribution") or {}).get("OK", 0)
    return {"name": report.get("name") or "", "count": report["count"], "rps": round(report["rps"], 1),
            "p50_ms": percentile_ms(report, 50), "p99_ms": percentile_ms(report, 99),
            "errors": report["count"] - ok, "error_kinds": report.get("errorDistribution") or {}}


def line(path: Path, s: dict) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    return (f"{path.stem:<14} {s['count']:>8} {s['rps']:>10.1f} {ms(s['p50_ms']):>9} {ms(s['p99_ms']):>9} "
            f"{s['errors']:>7}" + "".join(f"\n    {n} x {msg}" for msg, n in s["error_kinds"].items()))


def main(paths: list[str]) -> int:
    print(f"{'run':<14} {'requests':>8} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}")
    for p in map(Path, paths):
        print(line(p, summary(json.loads(p.read_text()))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
