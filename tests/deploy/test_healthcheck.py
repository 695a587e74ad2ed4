"""deploy/healthcheck.py, the compose healthchecks' program, against a real grpc.health.v1 server.
(tests/worker/test_health.py runs its `worker` check against a real worker process.)"""
from __future__ import annotations

import importlib.util
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from inferline.local_redis import free_port
from tests.deploy.project import DEPLOY


def _load():
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", DEPLOY / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = _load()


@pytest.fixture
def health_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(None)


def test_grpc_check_follows_the_serving_status(health_server):
    servicer, port = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main(["grpc", str(port)]) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck.main(["grpc", str(port)]) == 1
    servicer.set("inferline.v1.RouterService", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main(["grpc", str(port), "inferline.v1.RouterService"]) == 0


def test_grpc_check_fails_when_nothing_listens():
    assert healthcheck.check_grpc(free_port(), timeout_s=0.5) == 1


def test_usage_errors_exit_2():
    assert healthcheck.main([]) == 2
    assert healthcheck.main(["grpc"]) == 2


def test_worker_check_reads_the_workers_readiness_or_liveness(health_server, monkeypatch):
    servicer, port = health_server
    monkeypatch.delenv("INFERLINE_WORKER_HEALTH_PORT", raising=False)
    servicer.set("inferline.worker.liveness", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("inferline.worker.readiness", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck.main(["worker", str(port)]) == 1  # readiness is the default
    assert healthcheck.main(["worker", str(port), "readiness"]) == 1
    assert healthcheck.main(["worker", str(port), "liveness"]) == 0
    servicer.set("inferline.worker.readiness", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main(["worker", str(port)]) == 0


def test_worker_check_takes_the_port_from_the_workers_environment(health_server, monkeypatch):
    servicer, port = health_server
    servicer.set("inferline.worker.readiness", health_pb2.HealthCheckResponse.SERVING)
    monkeypatch.setenv("INFERLINE_WORKER_HEALTH_PORT", str(port))
    assert healthcheck.main(["worker"]) == 0
    assert healthcheck.main(["worker", "liveness"]) == 1  # never set: NOT_FOUND
    monkeypatch.delenv("INFERLINE_WORKER_HEALTH_PORT")
    assert healthcheck.worker_health_port() == 50054


def test_worker_check_fails_when_nothing_listens():
    assert healthcheck.check_worker(free_port(), timeout_s=0.5) == 1


def test_worker_usage_errors_exit_2():
    assert healthcheck.main(["worker", "not-a-port"]) == 2
    assert healthcheck.main(["worker", "1", "2"]) == 2
    assert healthcheck.main(["worker", "1", "readiness", "x"]) == 2
