"""deploy/healthcheck.py, the compose healthchecks' and the worker probes' program, against a real
grpc.health.v1 server and a real redis-server (the session's, on a free port)."""
from __future__ import annotations

import importlib.util
from concurrent import futures

import grpc
import pytest
import redis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from inferline.local_redis import free_port
from inferline.redis_protocol import worker_key, workers_set
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


@pytest.fixture
def worker_env(redis_url, monkeypatch):
    for var in ("REDIS_URL", "INFERLINE_WORKER_WORKER_ID", "INFERLINE_WORKER_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("INFERLINE_WORKER_ENGINE", "deploy-hc-model")
    client = redis.Redis.from_url(redis_url)
    yield client
    client.delete(workers_set("deploy-hc-model"), worker_key("pod-a-1"), worker_key("pod-b-1"), worker_key("given-id"))
    client.close()


def beat(client: redis.Redis, worker_id: str) -> None:
    client.hset(worker_key(worker_id), mapping={"model": "deploy-hc-model", "free_slots": 4})
    client.pexpire(worker_key(worker_id), 5000)
    client.sadd(workers_set("deploy-hc-model"), worker_id)


def test_worker_check_finds_this_hosts_heartbeat(worker_env):
    assert healthcheck.check_worker(hostname="pod-a") == 1  # nothing registered yet
    beat(worker_env, "pod-b-1")
    assert healthcheck.check_worker(hostname="pod-a") == 1  # another host's worker does not count
    beat(worker_env, "pod-a-1")
    assert healthcheck.check_worker(hostname="pod-a") == 0
    worker_env.delete(worker_key("pod-a-1"))  # heartbeat expired; the set still names it
    assert healthcheck.check_worker(hostname="pod-a") == 1


def test_worker_check_uses_an_explicit_worker_id(worker_env, monkeypatch):
    monkeypatch.setenv("INFERLINE_WORKER_WORKER_ID", "given-id")
    beat(worker_env, "pod-a-1")
    assert healthcheck.check_worker(hostname="pod-a") == 1
    beat(worker_env, "given-id")
    assert healthcheck.check_worker(hostname="anything") == 0


def test_worker_check_fails_without_redis(monkeypatch):
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.delenv("INFERLINE_WORKER_REDIS_URL", raising=False)
    monkeypatch.setenv("INFERLINE_WORKER_ENGINE", "deploy-hc-model")
    assert healthcheck.check_worker(hostname="pod-a", timeout_s=0.5) == 1
