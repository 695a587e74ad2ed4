"""Requests that go wrong below the API: oversized messages, bytes that are not a GenerateRequest."""
from __future__ import annotations

import grpc
import pytest

from inferline.v1 import common_pb2, generate_pb2
from tests.gateway.conftest import MODEL, assert_still_serving

GENERATE = "/inferline.v1.InferenceService/Generate"
GENERATE_STREAM = "/inferline.v1.InferenceService/GenerateStream"


def test_a_10_mb_prompt_is_refused_by_the_transport(stub, channel):
    req = generate_pb2.GenerateRequest(model=MODEL, prompt="x" * 10_000_000,
                                       parameters=common_pb2.SamplingParameters(max_tokens=8))
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(req, timeout=20)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # grpc core's own wording; it names the side, the size and the limit.
    assert "Received message larger than max (10000" in info.value.details()
    assert "vs. 4194304" in info.value.details()
    assert_still_serving(channel)


def raw_call(channel: grpc.Channel, method: str, payload: bytes) -> None:
    """Sends `payload` as is: identity serializers, so nothing checks it on the client side."""
    if method == GENERATE:
        channel.unary_unary(method)(payload, timeout=10)
    else:
        list(channel.unary_stream(method)(payload, timeout=10))


@pytest.mark.parametrize("method", [GENERATE, GENERATE_STREAM])
@pytest.mark.parametrize("payload,problem", [
    (b"\xff\xff\xff\xff", "Wire format was corrupt"),
    (b"\x12\x02\xff\xfe", "String field had bad UTF-8"),  # prompt (field 2) that is not UTF-8
], ids=["garbage", "bad-utf8"])
def test_bytes_that_are_not_a_generate_request_are_invalid_argument(channel, method, payload, problem):
    with pytest.raises(grpc.RpcError) as info:
        raw_call(channel, method, payload)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request: not a valid inferline.v1.GenerateRequest message" in info.value.details()
    assert problem in info.value.details()
    assert_still_serving(channel)


def test_a_field_of_the_wrong_wire_type_is_dropped_then_validated(channel):
    """Protobuf keeps a known field sent with the wrong wire type as an unknown field (no parse
    error), so `model` sent as an integer reads as an unset model."""
    params = common_pb2.SamplingParameters(max_tokens=8).SerializeToString()
    payload = (b"\x08\x05"  # field 1 (model, a string) sent as varint 5
               + b"\x12\x02hi"  # prompt "hi"
               + b"\x22" + bytes([len(params)]) + params)
    with pytest.raises(grpc.RpcError) as info:
        raw_call(channel, GENERATE, payload)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("model: is empty")
    assert_still_serving(channel)


def test_list_models_with_bytes_that_are_not_a_request(channel):
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/inferline.v1.InferenceService/ListModels")(b"\xff\xff", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inferline.v1.ListModelsRequest" in info.value.details()
