"""`python -m worker` serves grpc.health.v1 on its health port: liveness and readiness SERVING once it
runs, readiness NOT_SERVING as soon as SIGTERM starts the drain; deploy/healthcheck.py `worker` (what
compose runs) agrees. The synthetic engine keeps this fast; tests/worker/test_worker_process.py checks
readiness through the real SmolLM2."""
from __future__ import annotations

import signal
import subprocess
import sys
import uuid

import pytest
import redis

from inferline.local_redis import free_port
from inferline.v1 import common_pb2, router_pb2
from tests.worker.processes import (REPO, ServiceProcess, health_status, service_env, start_worker, wait_until,
                                    worker_health_port)
from tests.worker.workload import enqueue
from worker.health import LIVENESS, READINESS

MODEL = "health-synthetic"
ROUTER = "health-router"


def healthcheck(*args: str) -> int:
    """deploy/healthcheck.py as a compose healthcheck runs it."""
    return subprocess.run([sys.executable, str(REPO / "deploy" / "healthcheck.py"), *args], env=service_env(),
                          capture_output=True, timeout=30).returncode


@pytest.fixture
def client(redis_url):
    with redis.Redis.from_url(redis_url) as c:
        yield c


def test_a_worker_is_live_and_ready_then_not_ready_while_it_drains(redis_url, client, tmp_path):
    worker = start_worker(tmp_path, redis_url, MODEL, f"health-{uuid.uuid4().hex[:6]}", None,
                          engine_kind="synthetic-benchmark-only", synthetic_engine_step_ms=10,
                          readiness_interval_s=0.2, drain_timeout_s=60)
    try:
        port = worker_health_port(worker)
        for service in ("", LIVENESS, READINESS):
            wait_until(lambda: health_status(port, service) == "SERVING", 60, f"{service or '(server)'} SERVING",
                       worker)
        assert healthcheck("worker", str(port)) == 0
        assert healthcheck("worker", str(port), "liveness") == 0

        # A long request (500 steps of 10 ms) is running when SIGTERM comes: the worker drains it.
        request = router_pb2.RouteRequest(request_id="long-1", model=MODEL, prompt_token_ids=[1, 2, 3],
                                          parameters=common_pb2.SamplingParameters(max_tokens=500))
        enqueue(client, request, ROUTER)
        wait_until(lambda: any(e.get("event") == "request_started" for e in worker.log_events()), 30,
                   "the request to start", worker)
        worker.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: health_status(port, READINESS) == "NOT_SERVING", 10, "readiness NOT_SERVING", worker)
        assert health_status(port, "") == "NOT_SERVING"
        assert health_status(port, LIVENESS) == "SERVING"  # draining, still stepping
        assert healthcheck("worker", str(port)) == 1
        assert worker.proc.wait(timeout=60) == 0
    finally:
        worker.stop()
    finished = [e for e in worker.log_events() if e.get("event") == "request_finished"]
    assert [e["completion_tokens"] for e in finished] == [500]  # drained, not cut short
    assert health_status(port, READINESS) is None
    assert healthcheck("worker", str(port)) == 1  # nothing listens any more


def test_a_taken_health_port_fails_the_start(redis_url, tmp_path):
    port = free_port()
    first = start_worker(tmp_path, redis_url, MODEL, f"first-{uuid.uuid4().hex[:6]}", None,
                         engine_kind="synthetic-benchmark-only", health_port=port)
    try:
        assert worker_health_port(first) == port
        second = ServiceProcess("second", "worker", ["--redis-url", redis_url, "--engine", MODEL, "--health-port",
                                                     str(port), "--engine-kind", "synthetic-benchmark-only"], tmp_path)
        assert second.proc.wait(timeout=60) == 1
        [error] = [e for e in second.log_events() if e.get("level") == "error"]
        assert error["event"] == "health_port_unavailable" and error["port"] == port
        assert "Traceback" not in second.log_text()
        assert health_status(port, LIVENESS) == "SERVING"  # the first one still answers for itself
    finally:
        first.stop()
