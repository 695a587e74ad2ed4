"""The gateway's RouteMany transport against a real router process and a Redis of the test's own; the
test plays the worker (a heartbeat, then answering the entries the router queues). Many calls share one
RouteMany call and each gets its own answer; a client cancelling or its deadline passing cancels only its
request, worker-side too; the router's statuses reach the client as with a call per request; a router
that dies fails the requests in flight with UNAVAILABLE, and once it is back requests work again; one that
freezes is found by the channel's keepalive pings."""
from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import grpc
import pytest
import redis

from inferline.v1 import common_pb2, generate_pb2, generate_pb2_grpc, router_pb2
from tests.gateway.conftest import MODEL, running_gateway
from tests.servers import free_port, redis_server
from tests.worker.processes import ServiceProcess, start_router, wait_router_ready, wait_until

MAX_QUEUE_DEPTH = 3
STREAM = f"inferline:requests:{MODEL}"


class Stack:
    def __init__(self, client: redis.Redis, router: ServiceProcess, stub: generate_pb2_grpc.InferenceServiceStub):
        self.client = client
        self.router = router
        self.stub = stub

    def serve_model(self) -> None:
        """A live (fake) worker for MODEL: the router admits its requests."""
        self.client.hset(f"inferline:worker:fake-{MODEL}", mapping={"model": MODEL, "free_slots": 0})
        self.client.pexpire(f"inferline:worker:fake-{MODEL}", 120_000)
        self.client.sadd(f"inferline:workers:{MODEL}", f"fake-{MODEL}")

    def take(self, count: int, timeout: float = 10) -> dict[str, tuple[str, str]]:
        """Play the worker: take `count` queued entries; request id -> (entry id, router id)."""
        wait_until(lambda: self.client.exists(STREAM), timeout, "a request to queue")
        taken: dict[str, tuple[str, str]] = {}
        deadline = time.monotonic() + timeout
        while len(taken) < count and time.monotonic() < deadline:
            for _, entries in self.client.xreadgroup("workers", "fake", {STREAM: ">"}, count=count, block=500) or []:
                for entry_id, f in entries:
                    taken[f[b"rid"].decode()] = (entry_id.decode(), f[b"router"].decode())
        assert len(taken) == count, f"took {len(taken)} of {count}"
        return taken

    def answer(self, rid: str, entry_id: str, router_id: str, text: str) -> None:
        """Two events then the final one, as a worker publishes them (the router folds unary requests)."""
        for seq, piece in enumerate([text[:1], text[1:]]):
            self._publish(router_id, entry_id, router_pb2.RouteEvent(request_id=rid, seq=seq, token_ids=[seq + 1],
                                                                     text_delta=piece))
        self._publish(router_id, entry_id, router_pb2.RouteEvent(
            request_id=rid, seq=2, finish_reason=common_pb2.FINISH_REASON_STOP,
            usage=common_pb2.Usage(prompt_tokens=1, completion_tokens=2)))

    def _publish(self, router_id: str, entry_id: str, event: router_pb2.RouteEvent) -> None:
        self.client.xadd(f"inferline:results:{router_id}", {"rid": event.request_id, "seq": event.seq,
                                                             "event": event.SerializeToString(), "entry": entry_id})

    def cancelled(self, rid: str, entry_id: str) -> None:
        wait_until(lambda: self.client.get(f"inferline:cancel:{rid}") == entry_id.encode(), 5, f"cancel:{rid}")


def request(rid: str = "") -> generate_pb2.GenerateRequest:
    return generate_pb2.GenerateRequest(model=MODEL, prompt="hi", request_id=rid,
                                        parameters=common_pb2.SamplingParameters(max_tokens=2))


@pytest.fixture(scope="module")
def stack(loop_thread, engine_store_dir: Path, tmp_path_factory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("mux-logs")
    with redis_server(tmp_path_factory.mktemp("mux-redis")) as redis_url:
        port = free_port()
        router = start_router(logs, redis_url, f"mux-{uuid.uuid4().hex[:6]}", port, max_queue_depth=MAX_QUEUE_DEPTH,
                              cancel_ttl_s=60, shutdown_grace_s=1)
        client = redis.Redis.from_url(redis_url)
        try:
            wait_router_ready(router, port)
            with running_gateway(loop_thread, store_dir=engine_store_dir, router_address=f"127.0.0.1:{port}",
                                 redis_url=None) as address, grpc.insecure_channel(address) as channel:
                yield Stack(client, router, generate_pb2_grpc.InferenceServiceStub(channel))
        finally:
            router.stop()
            client.close()


@pytest.fixture
def stack_clean(stack: Stack) -> Stack:
    """Nothing queued from an earlier test."""
    stack.client.delete(STREAM, f"inferline:queued_tokens:{MODEL}")
    stack.serve_model()
    return stack


def test_a_model_no_worker_serves_is_not_found_from_the_router(stack):
    stack.client.delete(f"inferline:workers:{MODEL}", f"inferline:worker:fake-{MODEL}")
    for call in (stack.stub.Generate, lambda r, timeout: list(stack.stub.GenerateStream(r, timeout=timeout))):
        with pytest.raises(grpc.RpcError) as info:
            call(request(), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert f"'{MODEL}'" in info.value.details()


def test_concurrent_calls_share_one_router_call_and_get_their_own_answers(stack_clean):
    stack = stack_clean
    rids = [f"share-{i}" for i in range(MAX_QUEUE_DEPTH)]

    def call(i: int):
        if i % 2:
            return stack.stub.Generate(request(rids[i]), timeout=30).text
        return "".join(c.text_delta for c in stack.stub.GenerateStream(request(rids[i]), timeout=30))

    with ThreadPoolExecutor(len(rids)) as pool:
        results = [pool.submit(call, i) for i in range(len(rids))]
        for rid, (entry_id, router_id) in stack.take(len(rids)).items():
            stack.answer(rid, entry_id, router_id, f"answer to {rid}")
        assert [r.result(30) for r in results] == [f"answer to {rid}" for rid in rids]
    started = [e for e in stack.router.log_events() if e.get("event") == "route_many_started"]
    assert len(started) == 1  # every request of the gateway on one long-lived call


def test_a_cancelled_call_cancels_its_request_only(stack_clean):
    stack = stack_clean
    gone = stack.stub.Generate.future(request("cancel-me"), timeout=30)
    kept = stack.stub.Generate.future(request("keep-me"), timeout=30)
    taken = stack.take(2)
    gone.cancel()
    stack.cancelled("cancel-me", taken["cancel-me"][0])
    stack.answer("keep-me", *taken["keep-me"], "still here")
    assert kept.result(10).text == "still here"
    assert not stack.client.exists("inferline:cancel:keep-me")


def test_a_passed_deadline_is_deadline_exceeded_and_cancels_the_request(stack_clean):
    stack = stack_clean
    with pytest.raises(grpc.RpcError) as info:
        stack.stub.Generate(request("too-slow"), timeout=1.0)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    [(entry_id, _)] = stack.take(1).values()
    stack.cancelled("too-slow", entry_id)


def test_a_full_queue_is_resource_exhausted(stack_clean):
    stack = stack_clean
    waiting = [stack.stub.Generate.future(request(f"fill-{i}"), timeout=30) for i in range(MAX_QUEUE_DEPTH)]
    wait_until(lambda: stack.client.exists(STREAM) and stack.client.xlen(STREAM) == MAX_QUEUE_DEPTH, 10, "a full queue")
    for call in (stack.stub.Generate, lambda r, timeout: list(stack.stub.GenerateStream(r, timeout=timeout))):
        with pytest.raises(grpc.RpcError) as info:
            call(request(), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"max_queue_depth={MAX_QUEUE_DEPTH}" in info.value.details()
    for w in waiting:
        w.cancel()


def test_a_router_that_dies_fails_the_requests_in_flight_and_requests_work_once_it_is_back(
        loop_thread, engine_store_dir, tmp_path):
    with redis_server(tmp_path) as redis_url:
        port = free_port()
        client = redis.Redis.from_url(redis_url)
        routers = [start_router(tmp_path, redis_url, f"dies-{uuid.uuid4().hex[:6]}", port)]
        try:
            wait_router_ready(routers[0], port)
            with running_gateway(loop_thread, store_dir=engine_store_dir, router_address=f"127.0.0.1:{port}",
                                 redis_url=None) as address, grpc.insecure_channel(address) as channel:
                stack = Stack(client, routers[0], generate_pb2_grpc.InferenceServiceStub(channel))
                stack.serve_model()
                unary = stack.stub.Generate.future(request(), timeout=60)
                streamed = stack.stub.GenerateStream(request(), timeout=60)
                stream_error: list[grpc.RpcError] = []
                reader = threading.Thread(target=lambda: _drain(streamed, stream_error))
                reader.start()
                stack.take(2)
                routers[0].kill()  # no drain: the RouteMany call just breaks
                with pytest.raises(grpc.RpcError) as info:
                    unary.result(10)
                reader.join(10)
                for error in (info.value, *stream_error):
                    assert error.code() == grpc.StatusCode.UNAVAILABLE
                    assert error.details() == "router: unavailable, retry later"
                assert len(stream_error) == 1

                routers.append(start_router(tmp_path, redis_url, f"back-{uuid.uuid4().hex[:6]}", port))
                wait_router_ready(routers[1], port)
                client.delete(STREAM)
                stack.serve_model()

                def generate_once_back() -> str | None:
                    later = stack.stub.Generate.future(request(), timeout=30)
                    try:
                        for rid, taken in stack.take(1, timeout=2).items():
                            stack.answer(rid, *taken, "back again")
                        return later.result(10).text
                    except (AssertionError, grpc.RpcError):  # the gateway's channel still reconnecting
                        later.cancel()
                        return None
                assert wait_until(generate_once_back, 30, "a request to work with the router back") == "back again"
        finally:
            for router in routers:
                router.stop()
            client.close()


def _drain(stream, errors: list[grpc.RpcError]) -> None:
    try:
        for _ in stream:
            pass
    except grpc.RpcError as e:
        errors.append(e)


def test_a_frozen_router_is_found_by_keepalive_and_its_requests_fail_unavailable(
        loop_thread, engine_store_dir, tmp_path):
    """A router that stops answering without closing its connection (SIGSTOP: a hung process, a host gone):
    the gateway's pings go unanswered and the request fails within seconds, not at its 60 s deadline."""
    with redis_server(tmp_path) as redis_url:
        port = free_port()
        client = redis.Redis.from_url(redis_url)
        router = start_router(tmp_path, redis_url, f"frozen-{uuid.uuid4().hex[:6]}", port)
        try:
            wait_router_ready(router, port)
            with running_gateway(loop_thread, store_dir=engine_store_dir, router_address=f"127.0.0.1:{port}",
                                 redis_url=None, router_keepalive_s=1.0, router_keepalive_timeout_s=1.0
                                 ) as address, grpc.insecure_channel(address) as channel:
                stack = Stack(client, router, generate_pb2_grpc.InferenceServiceStub(channel))
                stack.serve_model()
                unary = stack.stub.Generate.future(request(), timeout=60)
                stack.take(1)  # queued: the router holds the request, waiting for its events
                os.kill(router.proc.pid, signal.SIGSTOP)
                try:
                    with pytest.raises(grpc.RpcError) as info:
                        unary.result(15)  # pings every 1 s, 1 s to answer: well inside 15 s
                finally:
                    os.kill(router.proc.pid, signal.SIGCONT)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            router.stop()
            client.close()
