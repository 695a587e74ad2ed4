"""Container health checks for inferline's services: compose `healthcheck`s (the images carry no
grpc_health_probe binary).

    python /app/deploy/healthcheck.py grpc PORT [SERVICE]
        grpc.health.v1 Check against 127.0.0.1:PORT (the gateway, router and builder serve it; the
        empty SERVICE, the default, is the whole server). Exit 0 when SERVING, 1 otherwise.
    python /app/deploy/healthcheck.py worker [PORT] [liveness|readiness]
        The worker's grpc.health.v1 (worker/health.py) on 127.0.0.1:PORT: readiness (the default;
        SERVING once a one-token probe went through its engine in time, NOT_SERVING while draining)
        or liveness (its step loop iterates). PORT defaults to the worker's health_port as the
        container's environment sets it (INFERLINE_WORKER_HEALTH_PORT, else 50054). Exit 0 when
        SERVING, 1 otherwise.

Exit status 2: a usage error (this text is printed). Kubernetes probes every service with its native
gRPC probes instead (the worker's on its `health` port, with the service names above).
"""
from __future__ import annotations

import os
import sys

TIMEOUT_S = 3.0
WORKER_CHECKS = {"liveness": "inferline.worker.liveness", "readiness": "inferline.worker.readiness"}
WORKER_HEALTH_PORT = 50054  # worker/settings.py health_port's default (tests/deploy compares them)


def check_grpc(port: int, service: str = "", host: str = "127.0.0.1", timeout_s: float = TIMEOUT_S) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as err:
            print(f"{host}:{port} {service or '(server)'}: {err.code().name}", file=sys.stderr)
            return 1
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"{host}:{port} {service or '(server)'}: "
              f"{health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}", file=sys.stderr)
        return 1
    return 0


def worker_health_port() -> int:
    """The worker's health_port as the worker reads it from this environment."""
    return int(os.environ.get("INFERLINE_WORKER_HEALTH_PORT", WORKER_HEALTH_PORT))


def check_worker(port: int | None = None, check: str = "readiness", timeout_s: float = TIMEOUT_S) -> int:
    return check_grpc(worker_health_port() if port is None else port, WORKER_CHECKS[check], timeout_s=timeout_s)


def main(argv: list[str]) -> int:
    if len(argv) in (2, 3) and argv[0] == "grpc":
        return check_grpc(int(argv[1]), argv[2] if len(argv) == 3 else "")
    if argv[:1] == ["worker"] and len(argv) <= 3:
        args = argv[1:]
        check = args.pop() if args and args[-1] in WORKER_CHECKS else "readiness"
        if len(args) > 1 or (args and not args[0].isdigit()):
            print(__doc__, file=sys.stderr)
            return 2
        return check_worker(int(args[0]) if args else None, check)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
