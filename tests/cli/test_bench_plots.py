"""Bench plots: PNGs from synthetic JSON records (no model), `inferline bench-plot`, the missing-matplotlib
error, and one small grid run with --plot-dir."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferline.cli import app
from inferline.cli.bench_plots import LATENCY_PNG, THROUGHPUT_PNG, plot_results

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def grid_record() -> dict:
    results = [{"engine": engine, "model": "m", "device": "cpu", "precision": "float32", "batch_size": bs,
                "input_len": 32, "output_len": 50, "tokens_per_sec": tps * bs}
               for engine, tps in (("inferline", 14.0), ("hf-transformers", 13.0)) for bs in (1, 2, 8)]
    return {"workload": "grid", "model": "m", "device": "cpu", "warmup": 1, "runs": 1, "seed": 0,
            "results": results, "comparison": []}


def mixed_record() -> dict:
    def mode(batching: str, scale: float) -> dict:
        runs = [{"makespan_ms": 1000 * scale, "tokens_per_sec": 10 / scale, "steps": 7, "generated_tokens": [2, 3, 5],
                 "latencies_ms": [v * scale for v in (200, 600, 1000)], "ttfts_ms": [v * scale for v in (50, 50, 450)]}]
        return {"batching": batching, "latency_ms": {"p50": 600 * scale, "p90": 920 * scale, "p99": 992 * scale,
                                                     "max": 1000 * scale},
                "ttft_ms": {"p50": 50 * scale, "p99": 442 * scale}, "runs": runs}

    return {"workload": "mixed", "model": "m", "device": "cpu", "warmup": 1, "runs": 1, "seed": 0, "requests": 3,
            "input_len": 8, "output_len_range": [2, 5], "max_batch_size": 2, "batching": ["static", "inflight"],
            "output_lens": [2, 3, 5], "modes": [mode("static", 1.5), mode("inflight", 1.0)],
            "comparison": {"throughput_ratio": 1.5, "p99_latency_ratio": 1 / 1.5}}


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_plots_from_synthetic_records(tmp_path: Path):
    assert plot_results(grid_record(), tmp_path / "grid") == [tmp_path / "grid" / THROUGHPUT_PNG]
    assert_png(tmp_path / "grid" / THROUGHPUT_PNG)
    assert plot_results(mixed_record(), tmp_path / "mixed") == [tmp_path / "mixed" / LATENCY_PNG]
    assert_png(tmp_path / "mixed" / LATENCY_PNG)


def test_bench_plot_command(tmp_path: Path):
    record = tmp_path / "mixed.json"
    record.write_text(json.dumps(mixed_record()))
    result = runner.invoke(app, ["bench-plot", str(record), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "out" / LATENCY_PNG)
    assert_png(tmp_path / "out" / LATENCY_PNG)
    # Default --out: next to the JSON file.
    (tmp_path / "grid.json").write_text(json.dumps(grid_record()))
    assert runner.invoke(app, ["bench-plot", str(tmp_path / "grid.json")]).exit_code == 0
    assert_png(tmp_path / THROUGHPUT_PNG)


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"workload": "grid", "results": [{"engine": "x"}]}', "{}"])
def test_bench_plot_rejects_a_bad_record(tmp_path: Path, content: str):
    record = tmp_path / "bad.json"
    record.write_text(content)
    result = runner.invoke(app, ["bench-plot", str(record), "--out", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_plot_dir_without_matplotlib_fails_before_loading(monkeypatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    # A model that does not exist: the error names --plot-dir, so the check ran before any loading.
    for workload in ("grid", "mixed"):
        result = runner.invoke(app, ["bench", "--model", "no-such-model", "--workload", workload,
                                     "--plot-dir", str(tmp_path / "plots")])
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --plot-dir") and "matplotlib" in lines[0], result.stderr
        assert result.stdout == ""
    record = tmp_path / "grid.json"
    record.write_text(json.dumps(grid_record()))
    result = runner.invoke(app, ["bench-plot", str(record)])
    assert result.exit_code == 2 and "matplotlib" in result.stderr


@pytest.mark.slow
def test_grid_bench_writes_throughput_plot(smollm2_dir: Path, tmp_path: Path):
    result = runner.invoke(app, ["bench", "--model", str(smollm2_dir), "--device", "cpu", "--batch-size", "1,2",
                                 "--input-output-len", "4,2", "--warmup", "0", "--runs", "1",
                                 "--json", str(tmp_path / "grid.json"), "--plot-dir", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "grid.json").read_text())["workload"] == "grid"
    assert_png(tmp_path / "plots" / THROUGHPUT_PNG)
