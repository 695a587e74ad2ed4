"""`inferline bench --compare-hf` end to end on the bundled model, with the smallest useful grid."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FIELDS = ["engine", "model", "device", "precision", "batch_size", "input_length", "output_length", "peak_mem(gb)",
          "tokens_per_sec", "latency(ms)", "percentile95(ms)", "percentile99(ms)", "ttft(ms)", "generation_time(ms)",
          "total_generated_tokens", "generation_tokens_per_second"]
NUMBER = re.compile(r"-?\d+(\.\d+)?|nan")


def _parse(line: str) -> dict[str, str]:
    words = line.removeprefix("[BENCHMARK] ").split(" ")
    return dict(zip(words[::2], words[1::2]))


def test_bench_compare_hf(tmp_path: Path):
    json_file = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "inferline.cli", "bench", "--model", "smollm2-135m", "--device", "cpu",
         "--batch-size", "1,2", "--input-output-len", "8,4", "--runs", "1", "--warmup", "0", "--compare-hf",
         "--json", str(json_file)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = [_parse(line) for line in proc.stdout.splitlines() if line.startswith("[BENCHMARK] ")]
    seen = {(r["engine"], r["batch_size"]) for r in lines}
    assert seen == {("inferline", "1"), ("inferline", "2"), ("hf-transformers", "1"), ("hf-transformers", "2")}
    assert len(lines) == 4
    for r in lines:
        # Our engine's lines end with the run's preemptions (none here: the pool holds every sequence).
        assert list(r) == (FIELDS + ["preemptions"] if r["engine"] == "inferline" else FIELDS)
        assert r.get("preemptions", "0") == "0"
        assert (r["model"], r["device"], r["precision"]) == ("smollm2-135m", "cpu", "float32")
        assert (r["input_length"], r["output_length"]) == ("8", "4")
        for key in FIELDS[4:]:
            assert NUMBER.fullmatch(r[key]), (key, r[key])
        assert float(r["tokens_per_sec"]) > 0
        assert int(r["total_generated_tokens"]) == 4 * int(r["batch_size"])
    assert "speedup" in proc.stdout  # the comparison table
    saved = json.loads(json_file.read_text())
    assert len(saved["results"]) == 4 and len(saved["comparison"]) == 2
    assert [r["preemptions"] for r in saved["results"]] == [[0], [0], None, None]  # one timed run; HF: none
    assert saved["kv_cache_free_mem_fraction"] == 0.9 and saved["kv_blocks"] > 0
    # Same prompts, same greedy decoding, float32: both engines should pick the same tokens.
    assert all(c["token_match"] == 1.0 for c in saved["comparison"])
