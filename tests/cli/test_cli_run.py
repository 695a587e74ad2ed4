"""`inferline run` end to end: the real console module in a subprocess, checked against the engine."""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Iterator

import pytest

from engine import Engine, EngineConfig, SamplingParams

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "def fibonacci(n):"]
MAX_OUTPUT_LEN = 8


def _start(*extra: str) -> subprocess.Popen[str]:
    args = ["run", "--model", "smollm2-135m", "--device", "cpu", "--max-output-len", str(MAX_OUTPUT_LEN), "--json"]
    for text in PROMPTS:
        args += ["--input-text", text]
    return subprocess.Popen([sys.executable, "-m", "inferline.cli", *args, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _outputs(proc: subprocess.Popen[str]) -> list[dict]:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return json.loads(stdout)["outputs"]  # the whole stdout must be the one JSON object


@pytest.fixture(scope="module")
def cli_procs() -> Iterator[dict[str, subprocess.Popen[str]]]:
    procs = {"raw": _start(), "chat": _start("--chat")}
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def engine(cli_procs: dict[str, subprocess.Popen[str]]) -> Engine:
    # Model loading is mostly single-threaded: this loads while the two CLI processes load theirs.
    return Engine(EngineConfig(model="smollm2-135m", device="cpu", max_batch_size=len(PROMPTS), max_seq_len=256))


@pytest.fixture(scope="module")
def cli_outputs(cli_procs: dict[str, subprocess.Popen[str]], engine: Engine) -> dict[str, list[dict]]:
    return {name: _outputs(proc) for name, proc in cli_procs.items()}


def test_json_matches_engine_greedy(cli_outputs, engine):
    raw_outputs = cli_outputs["raw"]
    expected = engine.generate(PROMPTS, SamplingParams(max_tokens=MAX_OUTPUT_LEN))
    assert len(raw_outputs) == len(PROMPTS)
    for out, exp in zip(raw_outputs, expected):
        assert set(out) == {"text", "token_ids", "finish_reason"}
        assert out["token_ids"] == exp.token_ids  # generated ids only, prompt excluded
        assert len(out["token_ids"]) <= MAX_OUTPUT_LEN
        assert out["finish_reason"] == exp.finish_reason
        assert out["text"] == engine.tokenizer.decode(out["token_ids"], skip_special_tokens=True)


def test_chat_applies_the_template(cli_outputs, engine):
    raw_outputs, chat = cli_outputs["raw"], cli_outputs["chat"]
    prompts = [engine.apply_chat_template([{"role": "user", "content": text}]) for text in PROMPTS]
    expected = engine.generate(prompts, SamplingParams(max_tokens=MAX_OUTPUT_LEN))
    assert [o["token_ids"] for o in chat] == [e.token_ids for e in expected]
    assert [o["token_ids"] for o in chat] != [o["token_ids"] for o in raw_outputs]
