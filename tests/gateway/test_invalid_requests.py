"""Every bad request gets the right status and a message naming the problem, on both Generate and
GenerateStream, and the gateway goes on serving afterwards."""
from __future__ import annotations

from typing import Any

import grpc
import pytest

from inferline.v1 import common_pb2, generate_pb2, generate_pb2_grpc
from tests.gateway.conftest import MAX_SEQ_LEN, MODEL, assert_still_serving

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def request(prompt: str | None = "Hello", messages: list[tuple[str, str]] | None = None, model: str = MODEL,
            request_id: str = "", **params: Any) -> generate_pb2.GenerateRequest:
    req = generate_pb2.GenerateRequest(model=model, request_id=request_id,
                                       parameters=common_pb2.SamplingParameters(**{"max_tokens": 8, **params}))
    if messages is not None:
        req.messages.SetInParent()  # selects the oneof even for an empty list
        req.messages.messages.extend(common_pb2.ChatMessage(role=r, content=c) for r, c in messages)
    elif prompt is not None:
        req.prompt = prompt
    return req


CASES = [
    # (id, request, status, the message must contain)
    ("empty prompt", request(prompt=""), INVALID, "prompt: is empty"),
    ("no prompt nor messages", request(prompt=None), INVALID, "prompt: set exactly one of prompt and messages"),
    ("prompt over max_seq_len", request(prompt="hello " * 400), INVALID,
     f"leave no room to generate within max_seq_len={MAX_SEQ_LEN}"),
    ("prompt over max_prompt_bytes", request(prompt="x" * 2_000_000), INVALID,
     "prompt: 2000000 bytes of text, more than the limit of 1048576 bytes"),
    ("max_tokens 0", request(max_tokens=0), INVALID, "max_tokens: is required and must be > 0, got 0"),
    ("max_tokens above the limit", request(max_tokens=5000), INVALID,
     "max_tokens: must be at most 4096 (the gateway's limit), got 5000"),
    ("unknown model", request(model="no-such-model"), grpc.StatusCode.NOT_FOUND,
     "model: 'no-such-model' is not in the engine store"),
    ("path as model", request(model="../etc"), grpc.StatusCode.NOT_FOUND, "model: '../etc' is not in the engine store"),
    ("empty model", request(model=""), INVALID, "model: is empty"),
    ("negative temperature", request(temperature=-0.5), INVALID, "temperature: must be >= 0, got -0.5"),
    ("top_p 0", request(top_p=0.0), INVALID, "top_p: must be in (0, 1], got 0.0"),
    ("top_p 1.5", request(top_p=1.5), INVALID, "top_p: must be in (0, 1], got 1.5"),
    ("top_p just above 1", request(top_p=1.1), INVALID, "top_p: must be in (0, 1], got 1.1"),
    ("too many stop strings", request(stop=[f"s{i}" for i in range(17)]), INVALID,
     "stop: at most 16 stop strings, got 17"),
    ("empty stop string", request(stop=[""]), INVALID, "stop: each stop string must be a non-empty string"),
    ("invalid chat role", request(messages=[("user", "hi"), ("robot", "beep")]), INVALID,
     "messages[1].role: must be one of system, user, assistant, got 'robot'"),
    ("empty messages", request(messages=[]), INVALID, "messages: is empty"),
    ("min_tokens above max_tokens", request(min_tokens=9), INVALID, "min_tokens: must be an integer in [0, max_tokens=8]"),
    ("presence_penalty 3", request(presence_penalty=3.0), INVALID, "presence_penalty: must be in [-2, 2], got 3.0"),
    ("repetition_penalty 0", request(repetition_penalty=0.0), INVALID, "repetition_penalty: must be > 0"),
    ("seed too large", request(seed=2**63), INVALID, "seed: must be an integer in [0, 2**63)"),
    ("top_logprobs without logprobs", request(top_logprobs=5), INVALID, "top_logprobs: needs logprobs set to true"),
    ("top_logprobs 21", request(logprobs=True, top_logprobs=21), INVALID, "top_logprobs: must be an integer in [0, 20]"),
    ("stop token id beyond the vocabulary", request(stop_token_ids=[10**6]), INVALID,
     "stop_token_ids: must be < vocab size 49152"),
    ("request_id with spaces", request(request_id="my id"), INVALID, "request_id: must be 1 to 128 characters"),
    ("request_id too long", request(request_id="a" * 129), INVALID, "request_id: must be 1 to 128 characters"),
]


def call(stub: generate_pb2_grpc.InferenceServiceStub, method: str, req: generate_pb2.GenerateRequest) -> None:
    if method == "Generate":
        stub.Generate(req, timeout=10)
    else:
        list(stub.GenerateStream(req, timeout=10))


@pytest.mark.parametrize("method", ["Generate", "GenerateStream"])
@pytest.mark.parametrize("req,code,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_is_rejected_with_a_message_naming_the_problem(stub, channel, method, req, code, message):
    with pytest.raises(grpc.RpcError) as info:
        call(stub, method, req)
    assert info.value.code() == code, info.value.details()
    assert message in info.value.details()
    assert_still_serving(channel)


def test_rejection_carries_the_request_id(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(request(prompt="", request_id="client-42"), timeout=10)
    assert ("x-request-id", "client-42") in tuple(info.value.trailing_metadata())
