"""`python -m gateway` as a process: it says where it listens, serves, and on SIGTERM lets the call
in flight finish and exits 0."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inferline.v1 import common_pb2, generate_pb2, generate_pb2_grpc
from tests.gateway.conftest import MODEL
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_serves_then_drains_on_sigterm(engine_store_dir, fake_router):
    router, router_address = fake_router
    port = free_port()
    env = {**os.environ, "INFERLINE_GATEWAY_STORE_DIR": str(engine_store_dir), "INFERLINE_GATEWAY_LOG_LEVEL": "info"}
    env.pop("INFERLINE_GATEWAY_API_KEYS", None)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--port", str(port), "--router-address", router_address,
                             "--shutdown-grace-s", "10"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any(f"gateway listening on 127.0.0.1:{port}" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            req = generate_pb2.GenerateRequest(model=MODEL, prompt="hi", request_id="delay-main",
                                               parameters=common_pb2.SamplingParameters(max_tokens=4))
            in_flight = generate_pb2_grpc.InferenceServiceStub(ch).Generate.future(req, timeout=20)
            router.wait_seen("delay-main")
            proc.send_signal(signal.SIGTERM)  # the router takes 1 s more to finish this one
            assert in_flight.result().text == "Hello, world"
        assert proc.wait(20) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    log = "".join(lines)
    assert "gateway stopping" in log and "gateway stopped" in log
    assert '"request_id": "delay-main"' in log  # request lines carry the id (JSON logs)
