"""Builds a service's grpc.aio server: error interceptor, health (grpc.health.v1), reflection."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from inferline.grpc.errors import ErrorInterceptor
from inferline.grpc.reflection import enable_reflection

# Generous enough for long prompts, small enough that a 10 MB prompt is refused by the transport.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Clients may ping (HTTP/2 keepalive) every second, with or without calls or data: the gateway pings its
# router this way to find a dead connection. grpc's default (one ping per 5 minutes without data) would
# answer faster pings with GOAWAY "too_many_pings", cutting every call on the connection.
KEEPALIVE_ENFORCEMENT = [("grpc.keepalive_permit_without_calls", 1),
                         ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
                         ("grpc.http2.max_ping_strikes", 0)]


def build_server(
    services: Sequence[tuple[Callable[[object, grpc.aio.Server], None], object, str]],
    address: str,
    extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    options: Sequence[tuple[str, Any]] = (),
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """`services`: (add_XServicer_to_server, servicer, full service name). Returns the server, its
    health servicer (every service starts SERVING) and the bound port (address may end in :0).
    `options`: more grpc channel arguments. A port that cannot be bound raises OSError."""
    server = grpc.aio.server(
        interceptors=[*extra_interceptors, ErrorInterceptor(status_on_unknown_exception=grpc.StatusCode.INTERNAL)],
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes), *KEEPALIVE_ENFORCEMENT, *options],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = []
    for add, servicer, name in services:
        add(servicer, server)
        names.append(name)
    enable_reflection(server, [*names, health.SERVICE_NAME])
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:  # grpcio >= 1.5x raises where older versions returned 0
        raise OSError(f"cannot bind {address}: {e}") from e
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return server, health_servicer, port


async def set_serving(health_servicer: health.aio.HealthServicer, service_names: Sequence[str], serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *service_names):
        await health_servicer.set(name, status)
