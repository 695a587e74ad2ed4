"""With api_keys set, every call but health needs `authorization: Bearer <key>`."""
from __future__ import annotations

from typing import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inferline.v1 import common_pb2, generate_pb2, generate_pb2_grpc
from tests.gateway.conftest import MODEL, running_gateway

KEYS = "key-one, key-two"


@pytest.fixture(scope="module")
def auth_channel(loop_thread, engine_store_dir, fake_router) -> Iterator[grpc.Channel]:
    with running_gateway(loop_thread, store_dir=engine_store_dir, router_address=fake_router[1], api_keys=KEYS) as address:
        with grpc.insecure_channel(address) as ch:
            yield ch


@pytest.mark.parametrize("metadata,message", [
    ((), "missing API key: send metadata 'authorization: Bearer <api key>'"),
    ((("authorization", "Bearer nope"),), "invalid API key"),
    ((("authorization", "Bearer key-one-and-more"),), "invalid API key"),
    ((("authorization", "Basic a2V5LW9uZQ=="),), "malformed authorization metadata"),
    ((("authorization", "Bearer "),), "malformed authorization metadata"),
], ids=["missing", "wrong", "prefix-of-key", "basic", "empty"])
def test_calls_without_a_valid_key_are_unauthenticated(auth_channel, metadata, message):
    stub = generate_pb2_grpc.InferenceServiceStub(auth_channel)
    req = generate_pb2.GenerateRequest(model=MODEL, prompt="hi", parameters=common_pb2.SamplingParameters(max_tokens=2))
    calls = [lambda: stub.ListModels(generate_pb2.ListModelsRequest(), metadata=metadata, timeout=5),
             lambda: stub.Generate(req, metadata=metadata, timeout=5),
             lambda: list(stub.GenerateStream(req, metadata=metadata, timeout=5))]
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert info.value.details().startswith(message)
    # ... and the gateway goes on serving those who have a key.
    ok = stub.ListModels(generate_pb2.ListModelsRequest(), metadata=(("authorization", "Bearer key-two"),), timeout=5)
    assert [m.name for m in ok.models] == [MODEL]


def test_a_valid_key_generates_and_scopes_the_idempotency_key_to_it(auth_channel, fake_router):
    stub = generate_pb2_grpc.InferenceServiceStub(auth_channel)
    req = generate_pb2.GenerateRequest(model=MODEL, prompt="hi", request_id="ok-auth",
                                       parameters=common_pb2.SamplingParameters(max_tokens=2))
    for key in ("key-one", "key-two"):
        response = stub.Generate(req, metadata=(("authorization", f"bearer {key}"),), timeout=10)
        assert response.text == "Hello, world" and response.request_id == "ok-auth"
    # Two clients choosing the same id get two router requests, never one another's generation.
    routed = [seen.request for rid, seen in fake_router[0].seen.items() if rid.endswith("/ok-auth")]
    assert len({r.request_id for r in routed}) == 2 and all(r.idempotent for r in routed)


def test_health_needs_no_key(auth_channel):
    # Probes of load balancers and orchestrators carry no credentials.
    status = health_pb2_grpc.HealthStub(auth_channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
