"""Fast CLI tests: parsing, report arithmetic, error lines. Nothing here loads a model."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from engine import InvalidParameterError
from inferline.cli import app
from inferline.cli.bench_cases import Case, make_cases, parse_batch_sizes, parse_input_output_len, random_prompts
from inferline.cli.bench_report import CaseResult, CaseTiming, Comparison, _percentile
from inferline.memory import PeakMemoryTracker

runner = CliRunner()


def test_parse_grid():
    assert parse_batch_sizes("1, 8,8") == [1, 8]
    assert parse_input_output_len("32,50;128,50;") == [(32, 50), (128, 50)]
    assert make_cases([1, 8], [(32, 50), (128, 50)]) == [Case(1, 32, 50), Case(8, 32, 50), Case(1, 128, 50), Case(8, 128, 50)]


@pytest.mark.parametrize("parse, text, field", [
    (parse_batch_sizes, "1,x", "--batch-size"),
    (parse_batch_sizes, "0", "--batch-size"),
    (parse_batch_sizes, "", "--batch-size"),
    (parse_input_output_len, "32", "--input-output-len"),
    (parse_input_output_len, "32,0", "--input-output-len"),
])
def test_parse_rejects(parse, text, field):
    with pytest.raises(InvalidParameterError) as err:
        parse(text)
    assert err.value.field == field


def test_random_prompts_are_exact_seeded_and_avoid_special_ids():
    class Tok:  # the few tokenizer attributes random_prompts reads
        all_special_ids = [0, 1, 2]
        added_tokens_decoder = {3: None}

        def __len__(self) -> int:
            return 10

    case = Case(4, 50, 1)
    prompts = random_prompts(case, 100, Tok(), seed=7)
    assert len(prompts) == 4 and all(len(p) == 50 for p in prompts)
    assert {t for p in prompts for t in p} <= set(range(4, 10))
    assert random_prompts(case, 100, Tok(), seed=7) == prompts
    assert random_prompts(case, 100, Tok(), seed=8) != prompts


def _result(engine: str, latencies_s: list[float], ttft_s: float, mem: int) -> CaseResult:
    return CaseResult(engine, "m", "cpu", "float32", Case(2, 8, 11), CaseTiming(latencies_s, ttft_s, [[1, 2], [3, 4]]),
                      load_peak_mem_bytes=mem, run_peak_mem_bytes=mem // 2)


def test_benchmark_line_and_derived_numbers():
    r = _result("inferline", [1.0, 3.0, 2.0], 0.5, 1 << 30)
    assert r.latency_ms == pytest.approx(2000)
    assert r.tokens_per_sec == pytest.approx(2 * 11 / 2.0)
    assert r.generation_time_ms == pytest.approx(1500)
    assert r.generation_tokens_per_second == pytest.approx(2 * 10 / 1.5)
    line = r.benchmark_line()
    assert line.startswith("[BENCHMARK] engine inferline model m device cpu precision float32 batch_size 2 ")
    assert "peak_mem(gb) 1.00 " in line and "latency(ms) 2000.0 " in line and "total_generated_tokens 22 " in line
    assert _percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert "preemptions" not in line and r.to_json()["preemptions"] is None  # HF's side: no scheduler


def test_benchmark_line_reports_our_preemptions():
    r = CaseResult("inferline", "m", "cpu", "float32", Case(2, 8, 11),
                   CaseTiming([1.0, 2.0, 3.0], 0.5, [[1], [2]], preemptions=[4, 0, 7]), 1, 1)
    assert r.benchmark_line().endswith(" preemptions 4")  # median of the timed runs
    assert r.to_json()["preemptions"] == [4, 0, 7]


def test_comparison():
    c = Comparison(_result("inferline", [1.0], 0.1, 100), _result("hf", [2.0], 0.1, 200))
    assert c.latency_reduction == pytest.approx(0.5)
    assert c.speedup == pytest.approx(2.0)
    assert c.memory_reduction == pytest.approx(0.5)
    assert c.token_match == 1.0


def test_cpu_peak_memory_sees_a_short_allocation():
    with PeakMemoryTracker(torch.device("cpu")) as memory:
        memory.checkpoint()
        block = torch.ones(64 << 20, dtype=torch.float32)  # 256 MiB, every page touched
        del block
        peak = memory.checkpoint()
    assert peak > 200 << 20


@pytest.mark.parametrize("args, needle", [
    (["run", "--model", "smollm2-135m", "--input-text", "hi", "--max-output-len", "0"], "--max-output-len"),
    (["run", "--input-text", "hi", "--max-output-len", "4"], "--model"),
    (["bench", "--model", "smollm2-135m", "--batch-size", "1,x"], "--batch-size"),
    (["bench", "--model", "smollm2-135m", "--runs", "0"], "--runs"),
    (["run", "--model", "smollm2-135m", "--input-text", "hi", "--max-output-len", "4", "--kv-cache-dtype", "fp16"],
     "--kv-cache-dtype"),
    (["bench", "--model", "smollm2-135m", "--kv-cache-dtype", "int8"], "--kv-cache-dtype"),
    (["bench", "--model", "smollm2-135m", "--kv-cache-free-mem-fraction", "1.5"], "--kv-cache-free-mem-fraction"),
])
def test_bad_input_is_one_line_naming_the_option(args, needle):
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert result.stdout == ""


def test_unknown_model_through_the_console_script():
    proc = subprocess.run([sys.executable, "-m", "inferline.cli", "run", "--model", "no-such-model",
                           "--input-text", "hi", "--max-output-len", "4", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "model" in error_lines[0] and "no-such-model" in error_lines[0]
