"""`inferline up` as a user runs it: one command starts Redis, builder, router, worker and gateway;
a client gets the engine's greedy answer; Ctrl-C stops everything it started."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from engine import Engine, EngineConfig, SamplingParams
from inferline.client import Client, Request
from inferline.local_redis import free_port

pytestmark = pytest.mark.slow

PROMPT = "What is the capital of France?"


def test_up_serves_the_bundled_model_and_stops_cleanly(tmp_path, smollm2_dir):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # up must start its own redis-server
    proc = subprocess.Popen([sys.executable, "-m", "inferline.cli", "up", "--state-dir", str(tmp_path / "state"),
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        deadline = time.monotonic() + 240
        line = ""
        while f"gateway listening on 127.0.0.1:{port}" not in line:
            assert time.monotonic() < deadline and proc.poll() is None, "inferline up did not come up"
            line = proc.stdout.readline()
        children = psutil.Process(proc.pid).children(recursive=True)
        assert {"redis-server"} <= {c.name() for c in children}
        assert len(children) >= 5  # redis-server, builder, router, worker, gateway

        with Client(f"127.0.0.1:{port}") as client:
            assert [m.name for m in client.list_models()] == ["smollm2-135m"]
            answer = client.generate(Request(model="smollm2-135m", messages=[{"role": "user", "content": PROMPT}],
                                             max_tokens=16), timeout=120)
        engine = Engine(EngineConfig(model=str(smollm2_dir), max_seq_len=256))
        expected = engine.generate([engine.apply_chat_template([{"role": "user", "content": PROMPT}])],
                                   SamplingParams(max_tokens=16))[0]
        assert list(answer.token_ids) == expected.token_ids and answer.text == expected.text

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    finally:
        if proc.poll() is None:
            proc.kill()
