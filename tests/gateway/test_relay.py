"""Generate and GenerateStream against a scripted router: what the router receives (token ids,
parameters, request id, deadline), how its events come back, how its errors and the client's
cancellation travel."""
from __future__ import annotations

import re
import time

import grpc
import pytest
from transformers import AutoTokenizer

from inferline.v1 import common_pb2, generate_pb2, generate_pb2_grpc
from tests.gateway.conftest import MODEL, running_gateway
from tests.servers import free_port

PARAMS = common_pb2.SamplingParameters(max_tokens=8, temperature=0.7, top_p=0.9, stop=["\n\n"], logprobs=True)


def request(rid: str, prompt: str = "The capital of France is", **kw) -> generate_pb2.GenerateRequest:
    return generate_pb2.GenerateRequest(model=MODEL, prompt=prompt, request_id=rid, parameters=PARAMS, **kw)


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)


def test_generate_returns_the_whole_completion(stub, fake_router, tokenizer):
    router, _ = fake_router
    response, call = stub.Generate.with_call(request("ok-generate", priority=3), timeout=10)
    assert response.request_id == "ok-generate"
    assert response.text == "Hello, world"
    assert list(response.token_ids) == [100, 101, 102]
    assert [lp.token_id for lp in response.logprobs] == [100, 101, 102]
    assert response.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert response.timings.total_ms == 3.0
    assert ("x-request-id", "ok-generate") in tuple(call.trailing_metadata())
    seen = router.seen["ok-generate"]
    assert seen.request.final_only  # unary: the router folds the events into one
    assert seen.request.request_id == "ok-generate"
    # Tokenized exactly as the engine does (tokenizer.encode of the raw prompt).
    assert list(seen.request.prompt_token_ids) == tokenizer.encode("The capital of France is")
    assert response.usage.prompt_tokens == len(seen.request.prompt_token_ids)
    assert seen.request.model == MODEL and seen.request.priority == 3
    assert seen.request.parameters == PARAMS


def test_chat_messages_get_the_chat_template(stub, fake_router, tokenizer):
    router, _ = fake_router
    req = generate_pb2.GenerateRequest(model=MODEL, request_id="ok-chat", parameters=PARAMS)
    req.messages.messages.add(role="system", content="Be brief.")
    req.messages.messages.add(role="user", content="Hi!")
    assert stub.Generate(req, timeout=10).text == "Hello, world"
    text = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
                                         add_generation_prompt=True, tokenize=False)
    assert list(router.seen["ok-chat"].request.prompt_token_ids) == tokenizer.encode(text, add_special_tokens=False)


def test_generate_stream_relays_each_event(stub, fake_router):
    call = stub.GenerateStream(request("ok-stream"), timeout=10)
    chunks = list(call)
    assert ("x-request-id", "ok-stream") in tuple(call.initial_metadata())
    assert not fake_router[0].seen["ok-stream"].request.final_only
    assert [c.text_delta for c in chunks] == ["Hello", ",", " world", ""]
    assert all(c.request_id == "ok-stream" for c in chunks)
    assert [list(c.token_ids) for c in chunks] == [[100], [101], [102], []]
    *middle, last = chunks
    # usage, timings and finish_reason only on the last chunk
    assert not any(c.HasField("usage") or c.HasField("timings") or c.finish_reason for c in middle)
    assert last.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert last.usage.completion_tokens == 3 and last.timings.queue_ms == 1.0


def test_without_a_request_id_the_gateway_makes_one(stub, fake_router):
    router, _ = fake_router
    # A generated id has none of the fake router's prefixes, so it gets the plain script.
    response, call = stub.Generate.with_call(request(""), timeout=10)
    assert re.fullmatch(r"[0-9a-f]{32}", response.request_id)
    assert ("x-request-id", response.request_id) in tuple(call.trailing_metadata())
    assert response.request_id in router.seen


@pytest.mark.parametrize("stream", [False, True], ids=["Generate", "GenerateStream"])
@pytest.mark.parametrize("prefix,code,message", [
    ("busy", grpc.StatusCode.RESOURCE_EXHAUSTED, "queue of 'smollm2-135m' is full (64 requests)"),
    ("gone", grpc.StatusCode.NOT_FOUND, "model: no worker serves 'smollm2-135m'"),
    ("cut", grpc.StatusCode.UNAVAILABLE, "router: the event stream ended before the request finished"),
])
def test_router_errors_keep_their_status_and_message(stub, channel, stream, prefix, code, message):
    req = request(f"{prefix}-{int(stream)}")
    with pytest.raises(grpc.RpcError) as info:
        list(stub.GenerateStream(req, timeout=10)) if stream else stub.Generate(req, timeout=10)
    assert info.value.code() == code
    assert info.value.details() == message


def test_the_deadline_travels_to_the_router(stub, fake_router):
    router, _ = fake_router
    stub.Generate(request("ok-deadline"), timeout=7)
    timeout = router.seen["ok-deadline"].timeout_s
    assert timeout is not None and 5 < timeout <= 7.1  # grpc rounds deadlines on the wire
    stub.Generate(request("ok-no-deadline"))
    assert router.seen["ok-no-deadline"].timeout_s is None


def test_a_passed_deadline_cancels_the_routed_request(stub, fake_router):
    router, _ = fake_router
    with pytest.raises(grpc.RpcError) as info:
        list(stub.GenerateStream(request("slow-deadline"), timeout=1.5))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert router.seen["slow-deadline"].cancelled.wait(5)


@pytest.mark.parametrize("stream", [False, True], ids=["Generate", "GenerateStream"])
def test_client_cancellation_cancels_the_router_call(stub, fake_router, stream):
    router, _ = fake_router
    rid = f"slow-cancel-{int(stream)}"
    if stream:
        call = stub.GenerateStream(request(rid), timeout=30)
        assert next(call).text_delta == "Hello"
        call.cancel()
    else:
        future = stub.Generate.future(request(rid), timeout=30)
        router.wait_seen(rid)
        time.sleep(0.2)  # let the first event reach the gateway
        future.cancel()
    assert router.seen[rid].cancelled.wait(5), "the router call was not cancelled"


def test_an_unreachable_router_is_unavailable(loop_thread, engine_store_dir):
    with running_gateway(loop_thread, store_dir=engine_store_dir, router_address=f"127.0.0.1:{free_port()}") as address:
        with grpc.insecure_channel(address) as ch:
            with pytest.raises(grpc.RpcError) as info:
                generate_pb2_grpc.InferenceServiceStub(ch).Generate(request("ok-down"), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "router: unavailable, retry later"
