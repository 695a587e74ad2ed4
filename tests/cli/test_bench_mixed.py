"""`inferline bench --workload mixed`: option parsing, the report's arithmetic, CLI errors (no model), and
one small end-to-end run of both batchings on the bundled model. No assertion is about speed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine import InvalidParameterError
from inferline.cli import app
from inferline.cli.bench_mixed import (draw_output_lens, make_spec, parse_batchings, parse_output_len_range,
                                       warmup_requests)
from inferline.cli.bench_mixed_report import MixedRun, ModeResult, mixed_comparison

runner = CliRunner()


def test_parse_options_and_defaults():
    assert parse_output_len_range("16, 512") == (16, 512)
    assert parse_output_len_range("7") == (7, 7)
    assert parse_batchings("inflight,static,inflight") == ("inflight", "static")
    spec = make_spec(None, None, None, None, None)
    assert (spec.requests, spec.input_len, spec.output_lo, spec.output_hi, spec.batchings, spec.max_batch_size) == \
        (256, 128, 16, 512, ("static", "inflight"), 64)
    assert spec.max_seq_len == 128 + 512


@pytest.mark.parametrize("args, option", [
    ((0, None, None, None, None), "--requests"),
    ((None, 0, None, None, None), "--input-len"),
    ((None, None, "12,2", None, None), "--output-len-range"),
    ((None, None, "0,4", None, None), "--output-len-range"),
    ((None, None, "1,2,3", None, None), "--output-len-range"),
    ((None, None, "a,b", None, None), "--output-len-range"),
    ((None, None, None, "static,dynamic", None), "--batching"),
    ((None, None, None, ",", None), "--batching"),
    ((None, None, None, None, 0), "--max-batch-size"),
    ((None, None, None, None, None, "zipf"), "--output-len-dist"),
])
def test_make_spec_rejects(args, option):
    with pytest.raises(InvalidParameterError) as err:
        make_spec(*args)
    assert err.value.field == option


def test_output_len_draws_are_seeded_and_in_range():
    draws = draw_output_lens(500, 16, 512, seed=3)
    assert len(draws) == 500 and min(draws) >= 16 and max(draws) <= 512 and len(set(draws)) > 100
    assert draw_output_lens(500, 16, 512, seed=3) == draws
    assert draw_output_lens(500, 16, 512, seed=4) != draws


def test_geometric_draws_have_a_long_tail_capped_at_hi():
    draws = draw_output_lens(4000, 16, 512, seed=3, dist="geometric")
    assert min(draws) == 16 and max(draws) == 512  # lengths start at LO; the cap is reached
    # Mean LO + (HI - LO) / 4 = 140 before the cap (~138 after it); most requests are short.
    assert 125 < sum(draws) / len(draws) < 150
    assert sorted(draws)[len(draws) // 2] < 110  # median ~ 16 + 124 * ln 2 = 102
    assert draw_output_lens(4000, 16, 512, seed=3, dist="geometric") == draws
    assert draw_output_lens(4000, 16, 512, seed=3) != draws  # uniform draws differ
    assert make_spec(None, None, None, None, None, "geometric").output_dist == "geometric"
    assert draw_output_lens(5, 7, 7, seed=0, dist="geometric") == [7] * 5


def test_warmup_covers_every_batch_size_with_other_prompts():
    spec = make_spec(10, 4, "2,3", None, 4)
    prompts, lens = warmup_requests(spec, 100, None, seed=0)
    assert lens == [1, 2, 3, 3]  # min(max_batch_size, requests) requests, lengths capped at HI
    assert len(prompts) == 4 and all(len(p) == 4 for p in prompts)


def _mode(batching: str, makespans: list[float]) -> ModeResult:
    runs = [MixedRun(m, [m / 4, m / 2, m], [m / 8, m / 8, m / 2], [1, 2, 3], 5) for m in makespans]
    return ModeResult("inferline", "m", "cpu", "float32", batching, 3, 8, 1, 3, 2, runs, 0.5)


def test_mode_result_medians_and_comparison():
    static, inflight = _mode("static", [2.0, 4.0, 3.0]), _mode("inflight", [1.0, 1.5, 2.0])
    assert static.makespan_ms == pytest.approx(3000)
    assert static.tokens_per_sec == pytest.approx(6 / 3.0)  # median of per-run tokens/s
    assert static.latency_ms(50) == pytest.approx(1500) and static.latency_ms(100) == pytest.approx(3000)
    cmp = mixed_comparison([static, inflight])
    assert cmp["throughput_ratio"] == pytest.approx(inflight.tokens_per_sec / static.tokens_per_sec) == pytest.approx(2)
    assert cmp["p99_latency_ratio"] == pytest.approx(inflight.latency_ms(99) / static.latency_ms(99))
    assert mixed_comparison([static]) is None
    line = static.benchmark_line()
    assert line.startswith("[BENCHMARK] engine inferline model m device cpu precision float32 workload mixed "
                           "batching static requests 3 ")
    assert "tokens_per_sec 2.00 " in line and "latency_p99(ms) " in line and line.endswith("total_generated_tokens 6")
    record = static.to_json()
    assert set(record["latency_ms"]) == {"p50", "p90", "p99", "max"} and set(record["ttft_ms"]) == {"p50", "p99"}
    assert len(record["runs"]) == 3 and record["runs"][0]["latencies_ms"] == pytest.approx([500, 1000, 2000])


@pytest.mark.parametrize("args, option", [
    (["--workload", "mixed", "--output-len-range", "12,2"], "--output-len-range"),
    (["--workload", "mixed", "--requests", "0"], "--requests"),
    (["--workload", "mixed", "--batching", "static,continuous"], "--batching"),
    (["--workload", "mixed", "--compare-hf"], "--compare-hf"),
    (["--workload", "mixed", "--model", "a,b"], "--model"),
    (["--workload", "bursty"], "--workload"),
    (["--requests", "8"], "--requests"),  # a mixed-only option with the grid workload
])
def test_bad_mixed_options_are_one_line_naming_the_option(args, option):
    result = runner.invoke(app, ["bench", "--model", "no-such-model", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {option}"), result.stderr
    assert result.stdout == ""


@pytest.mark.slow
def test_mixed_workload_static_vs_inflight(smollm2_dir: Path, tmp_path: Path):
    json_file = tmp_path / "mixed.json"
    result = runner.invoke(app, ["bench", "--model", str(smollm2_dir), "--device", "cpu", "--workload", "mixed",
                                 "--requests", "6", "--input-len", "8", "--output-len-range", "2,12",
                                 "--max-batch-size", "2", "--runs", "1", "--seed", "5", "--json", str(json_file)])
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("[BENCHMARK] ")]
    assert [line.split(" batching ")[1].split()[0] for line in lines] == ["static", "inflight"]
    assert "in-flight / static: throughput" in result.stdout

    record = json.loads(json_file.read_text())
    draws = draw_output_lens(6, 2, 12, seed=5)
    assert record["workload"] == "mixed" and record["output_lens"] == draws
    assert (record["requests"], record["input_len"], record["output_len_range"]) == (6, 8, [2, 12])
    modes = {m["batching"]: m for m in record["modes"]}
    assert list(modes) == ["static", "inflight"]
    for mode in modes.values():
        (run,) = mode["runs"]
        assert run["generated_tokens"] == draws  # every request got exactly its drawn length, in both modes
        assert mode["total_generated_tokens"] == sum(draws)
        assert len(run["latencies_ms"]) == len(run["ttfts_ms"]) == 6
        assert all(0 < t <= lat for t, lat in zip(run["ttfts_ms"], run["latencies_ms"]))
        assert run["makespan_ms"] == pytest.approx(max(run["latencies_ms"])) == pytest.approx(mode["latency_ms"]["max"])
        assert mode["tokens_per_sec"] == pytest.approx(sum(draws) / (run["makespan_ms"] / 1e3))
        lat = mode["latency_ms"]
        assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    # Static batching admits requests 2 and 3 only after requests 0 and 1 both finished.
    static = modes["static"]["runs"][0]
    assert min(static["ttfts_ms"][2:4]) > max(static["latencies_ms"][:2])
    cmp = record["comparison"]
    assert cmp["throughput_ratio"] == pytest.approx(modes["inflight"]["tokens_per_sec"] / modes["static"]["tokens_per_sec"])
    assert cmp["p99_latency_ratio"] == pytest.approx(modes["inflight"]["latency_ms"]["p99"] /
                                                     modes["static"]["latency_ms"]["p99"])
