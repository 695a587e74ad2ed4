"""Container health checks for inferline's services: compose `healthcheck`s and Kubernetes exec probes.

    python /app/deploy/healthcheck.py grpc PORT [SERVICE]
        grpc.health.v1 Check against 127.0.0.1:PORT (the gateway, router and builder serve it; the
        empty SERVICE, the default, is the whole server). Exit 0 when SERVING, 1 otherwise.
    python /app/deploy/healthcheck.py worker
        The worker has no gRPC port: it is healthy while its heartbeat hash lives in Redis. Settings
        come from the container's environment, as the worker reads them (INFERLINE_WORKER_ENGINE,
        INFERLINE_WORKER_REDIS_URL or REDIS_URL, INFERLINE_WORKER_WORKER_ID). Without an explicit
        worker id, the check looks for the default ids of this host (`<hostname>-<pid>`): the
        container's hostname is the worker's. Exit 0 when such a heartbeat exists, 1 otherwise.

Kubernetes probes the gateway, router and builder with its native gRPC probes instead; this script is
for compose (no grpc_health_probe binary in the images) and for the worker everywhere.
"""
from __future__ import annotations

import socket
import sys

TIMEOUT_S = 3.0


def check_grpc(port: int, service: str = "", host: str = "127.0.0.1", timeout_s: float = TIMEOUT_S) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as err:
            print(f"{host}:{port}: {err.code().name}", file=sys.stderr)
            return 1
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"{host}:{port}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}", file=sys.stderr)
        return 1
    return 0


def check_worker(hostname: str | None = None, timeout_s: float = TIMEOUT_S) -> int:
    import redis

    from inferline.redis_protocol import text, worker_key, workers_set
    from worker.settings import WorkerSettings

    settings = WorkerSettings()  # the environment, exactly as the worker reads it
    hostname = hostname or socket.gethostname()
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        if "worker_id" in settings.model_fields_set:
            candidates = [settings.worker_id]
        else:
            members = [text(m) for m in client.smembers(workers_set(settings.engine))]
            candidates = [m for m in members if m.startswith(f"{hostname}-")]
        if any(client.exists(worker_key(worker_id)) for worker_id in candidates):
            return 0
    except redis.RedisError as err:
        print(f"redis: {err}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"no live heartbeat of a worker of {settings.engine!r} on {hostname}", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if len(argv) in (2, 3) and argv[0] == "grpc":
        return check_grpc(int(argv[1]), argv[2] if len(argv) == 3 else "")
    if argv == ["worker"]:
        return check_worker()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
