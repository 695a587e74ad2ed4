"""Workers and routers as real `python -m` processes on loopback, for tests. Each writes its JSON log
lines to a file (a pipe nobody reads would fill up and stall it)."""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inferline import stack

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def service_env() -> dict[str, str]:
    env = dict(os.environ)
    # Two cores shared by several processes: one torch thread each, or they thrash.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # No /metrics on the fixed default ports from tests; a test that wants it passes --metrics-port.
    env.update({f"INFERLINE_{service}_METRICS_PORT": "0" for service in ("GATEWAY", "ROUTER", "WORKER", "BUILDER")})
    # Nor grpc.health.v1 on the worker's fixed default port: each worker picks a free one (logged,
    # `health_serving`; health_port() reads it back).
    env["INFERLINE_WORKER_HEALTH_PORT"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class ServiceProcess(stack.ServiceProcess):
    """A service started at once from the repository, one torch thread, its log parsed for assertions."""

    def __init__(self, name: str, module: str, args: list[str], log_dir: Path):
        super().__init__(name, module, env=service_env(), log_dir=log_dir, args=args)
        self.start()

    def log_events(self) -> list[dict]:
        events = []
        for line in self.log_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
        return events

    def failure(self, what: str) -> AssertionError:
        return AssertionError(f"{what}; {self.name} exit={self.proc.poll()}, log tail:\n{self.log_text()[-3000:]}")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, proc: ServiceProcess | None = None,
               interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and not proc.alive():
            raise proc.failure(f"{proc.name} exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise proc.failure(f"timed out waiting for {what}") if proc else AssertionError(f"timed out: {what}")
        time.sleep(interval)


def start_worker(log_dir: Path, redis_url: str, model: str, worker_id: str, model_path: Path | None,
                 **settings: object) -> ServiceProcess:
    args = ["--redis-url", redis_url, "--engine", model, "--worker-id", worker_id, "--device", "cpu"]
    if model_path is not None:
        args += ["--model-path", str(model_path)]
    for name, value in settings.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return ServiceProcess(worker_id, "worker", args, log_dir)


def wait_worker_ready(client: redis.Redis, worker: ServiceProcess, timeout: float = 90) -> None:
    wait_until(lambda: client.exists(f"inferline:worker:{worker.name}"), timeout, "the worker's heartbeat", worker)


def worker_health_port(worker: ServiceProcess, timeout: float = 90) -> int:
    """The port the worker's grpc.health.v1 server bound (its `health_serving` log line)."""
    def logged() -> int | None:
        return next((e["port"] for e in worker.log_events() if e.get("event") == "health_serving"), None)

    return wait_until(logged, timeout, "the worker's health port", worker)


def health_status(port: int, service: str = "", timeout: float = 1.0) -> str | None:
    """grpc.health.v1 Check on 127.0.0.1:port: SERVING, NOT_SERVING, ...; None when nothing answers."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout)
        except grpc.RpcError:
            return None
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def start_router(log_dir: Path, redis_url: str, router_id: str, port: int, **settings: object) -> ServiceProcess:
    args = ["--redis-url", redis_url, "--router-id", router_id, "--host", "127.0.0.1", "--port", str(port)]
    for name, value in settings.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return ServiceProcess(router_id, "router", args, log_dir)


def start_gateway(log_dir: Path, port: int, router_port: int, store_dir: Path, **settings: object) -> ServiceProcess:
    args = ["--port", str(port), "--router-address", f"127.0.0.1:{router_port}", "--store-dir", str(store_dir)]
    for name, value in settings.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return ServiceProcess("gateway", "gateway", args, log_dir)


def wait_router_ready(router: ServiceProcess, port: int, timeout: float = 60) -> None:
    def serving() -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
            except grpc.RpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

    wait_until(serving, timeout, "the router's health to be SERVING", router, interval=0.2)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """The in-process reference engine shares two cores with the service processes: with one thread
    it runs ~5x faster than with two fighting them (and uses the workers' own thread count)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
