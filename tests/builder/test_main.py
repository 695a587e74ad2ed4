"""`python -m builder` as a process: settings from flags and env, registry re-sync at start, health,
and SIGTERM draining a running build (the client gets every event, the process exits 0)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inferline.v1 import builder_pb2 as pb
from inferline.v1 import builder_pb2_grpc
from tests.builder.conftest import redis_db
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]


def wait_serving(channel: grpc.Channel, proc: subprocess.Popen, timeout: float = 60) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            status = health.Check(health_pb2.HealthCheckRequest(service="inferline.v1.BuilderService"), timeout=1).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise AssertionError("the builder never reported SERVING")


def test_sigterm_drains_a_running_build_then_exits_0(tmp_path, redis_url, model_root, tiny_llama_dir):
    url = redis_db(redis_url, 2)
    registry = redis.Redis.from_url(url, decode_responses=True)
    registry.flushdb()
    registry.hset("inferline:engine:ghost", mapping={"name": "ghost", "status": "ready"})  # not in the store
    registry.sadd("inferline:engines", "ghost")
    port = free_port()
    env = {**os.environ, "REDIS_URL": url, "INFERLINE_BUILDER_ALLOWED_ROOTS": str(model_root)}
    proc = subprocess.Popen([sys.executable, "-m", "builder", "--port", str(port), "--store-dir", str(tmp_path / "s")],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_serving(channel, proc)
            assert not registry.exists("inferline:engine:ghost")  # re-synced from the (empty) store
            assert not registry.sismember("inferline:engines", "ghost")
            stream = builder_pb2_grpc.BuilderServiceStub(channel).BuildEngine(
                pb.BuildEngineRequest(source=str(tiny_llama_dir), name="tiny", max_batch_size=1), timeout=60)
            events = [next(stream)]
            proc.send_signal(signal.SIGTERM)  # mid-build: it must finish and stream to the end
            events += list(stream)
        assert events[-1].stage == "done" and events[-1].engine.status == "ready"
        assert proc.wait(timeout=30) == 0
        assert registry.hget("inferline:engine:tiny", "status") == "ready"
        assert b"builder_stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
