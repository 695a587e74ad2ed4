"""A worker whose engine is missing from the store, or corrupt, exits non-zero with a clear message."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferline.engine_store import EngineStore, Manifest
from tests.worker.processes import ServiceProcess

EXIT_ENGINE_UNAVAILABLE = 78


@pytest.fixture
def store(tmp_path) -> Path:
    """A store holding one tiny engine (not a loadable model: verification fails before loading)."""
    store = EngineStore(tmp_path / "store")
    staging = store.new_staging_dir("tiny")
    (staging / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (staging / "model.safetensors").write_bytes(b"\0" * 1024)
    store.commit(staging, Manifest(name="tiny", fingerprint="f" * 64, architecture="llama", dtype="float32",
                                   quantization={"scheme": "none"}, max_batch_size=1, max_seq_len=16, source="test"))
    return store.root


def run_worker(tmp_path: Path, store: Path, engine: str) -> tuple[int, str]:
    # Verification comes before any Redis use: nothing listens on this port.
    worker = ServiceProcess(f"worker-{engine}", "worker",
                            ["--engine", engine, "--store-dir", str(store), "--redis-url", "redis://127.0.0.1:1/0"],
                            tmp_path)
    code = worker.proc.wait(timeout=60)
    worker.stop()
    return code, worker.log_text()


def error_line(log: str) -> dict:
    [line] = [json.loads(x) for x in log.splitlines() if x.startswith("{") and '"level": "error"' in x]
    return line


def test_a_missing_engine_exits_non_zero_saying_so(tmp_path, store):
    code, log = run_worker(tmp_path, store, "absent")
    assert code == EXIT_ENGINE_UNAVAILABLE
    line = error_line(log)
    assert line["event"] == "engine_unavailable" and "'absent' is not in the store" in line["error"]
    assert "Traceback" not in log


def test_a_corrupt_engine_exits_non_zero_naming_the_bad_file(tmp_path, store):
    with open(store / "tiny" / "model.safetensors", "r+b") as f:
        f.write(b"\1")  # same size, different content
    code, log = run_worker(tmp_path, store, "tiny")
    assert code == EXIT_ENGINE_UNAVAILABLE
    line = error_line(log)
    assert "'tiny' is corrupt" in line["error"] and "model.safetensors does not match its sha256" in line["error"]
    assert "Traceback" not in log
