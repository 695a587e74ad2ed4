"""Gateway fixtures: a real engine store holding the bundled SmolLM2, a fake router and the gateway
itself, both grpc.aio servers on a background loop, reached through plain blocking clients."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.server import Gateway, create_gateway
from gateway.settings import GatewaySettings
from inferline.v1 import generate_pb2, generate_pb2_grpc
from tests.conftest import STORE_MAX_SEQ_LEN as MAX_SEQ_LEN
from tests.conftest import STORE_MODEL as MODEL
from tests.gateway.fakes import FakeRouter, LoopThread, start_fake_router


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="session")
def fake_router(loop_thread: LoopThread) -> Iterator[tuple[FakeRouter, str]]:
    router = FakeRouter()
    server, port = loop_thread.run(start_fake_router(router))
    yield router, f"127.0.0.1:{port}"
    loop_thread.run(server.stop(0))


@contextmanager
def running_gateway(loop_thread: LoopThread, **overrides: Any) -> Iterator[str]:
    """A gateway on a free port; yields its address. Settings are explicit so the environment of the
    test run cannot change them."""
    settings = GatewaySettings(**{"host": "127.0.0.1", "port": 0, "api_keys": (), "redis_url": None, **overrides})

    async def start() -> Gateway:
        gateway = create_gateway(settings)
        await gateway.start()
        return gateway

    gateway = loop_thread.run(start())
    try:
        yield f"127.0.0.1:{gateway.port}"
    finally:
        loop_thread.run(gateway.stop(0))


@pytest.fixture(scope="session")
def gateway_address(loop_thread: LoopThread, engine_store_dir: Path, fake_router: tuple[FakeRouter, str],
                    redis_url: str) -> Iterator[str]:
    with running_gateway(loop_thread, store_dir=engine_store_dir, router_address=fake_router[1],
                         redis_url=redis_url) as address:
        yield address


@pytest.fixture(scope="session")
def channel(gateway_address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway_address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> generate_pb2_grpc.InferenceServiceStub:
    return generate_pb2_grpc.InferenceServiceStub(channel)


def assert_still_serving(channel: grpc.Channel) -> None:
    """After a rejected call the gateway must go on answering: health and a real ListModels."""
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    models = generate_pb2_grpc.InferenceServiceStub(channel).ListModels(generate_pb2.ListModelsRequest(), timeout=5)
    assert [m.name for m in models.models] == [MODEL]
