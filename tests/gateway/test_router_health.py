"""The gateway's health follows its router's (gateway/router_health.py): NOT_SERVING while the router
says NOT_SERVING or cannot be reached, SERVING again once it is back."""
from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.handlers import SERVICE_NAME
from inferline.v1 import router_pb2_grpc
from tests.gateway.conftest import running_gateway
from tests.gateway.fakes import FakeRouter
from tests.servers import free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def start_router_with_health(port: int = 0) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    server = grpc.aio.server()
    router_pb2_grpc.add_RouterServiceServicer_to_server(FakeRouter(), server)
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, servicer, port


def gateway_status(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def wait_gateway(address: str, want: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while (got := gateway_status(address)) != want:
        assert time.monotonic() < deadline, f"gateway health {got}, waited for {want}"
        time.sleep(0.05)
    assert gateway_status(address, SERVICE_NAME) == want


def test_gateway_health_follows_the_routers(loop_thread, engine_store_dir):
    server, router_health, port = loop_thread.run(start_router_with_health())
    try:
        with running_gateway(loop_thread, store_dir=engine_store_dir, router_address=f"127.0.0.1:{port}") as address:
            assert gateway_status(address) == SERVING  # checked once before start returned
            loop_thread.run(router_health.set("", NOT_SERVING))  # e.g. the router lost Redis
            wait_gateway(address, NOT_SERVING)
            loop_thread.run(router_health.set("", SERVING))
            wait_gateway(address, SERVING)
            loop_thread.run(server.stop(0))  # the router goes away
            wait_gateway(address, NOT_SERVING)
            server, router_health, _ = loop_thread.run(start_router_with_health(port))  # and comes back
            wait_gateway(address, SERVING, timeout=30)  # the channel's reconnect backoff included
    finally:
        loop_thread.run(server.stop(0))


def test_a_gateway_without_a_reachable_router_starts_not_serving(loop_thread, engine_store_dir):
    with running_gateway(loop_thread, store_dir=engine_store_dir, router_address=f"127.0.0.1:{free_port()}") as address:
        assert gateway_status(address) == NOT_SERVING
        assert gateway_status(address, SERVICE_NAME) == NOT_SERVING
