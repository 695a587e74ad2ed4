"""A real router process, no model: admission (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED,
ALREADY_EXISTS), cancellation, queue stats, and relaying events (the test plays the worker)."""
from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
import redis

from inferline.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.servers import free_port
from tests.worker.processes import start_router, wait_router_ready, wait_until

MAX_QUEUE_DEPTH = 3
MAX_QUEUED_TOKENS = 100


@pytest.fixture(scope="module")
def router(redis_url, tmp_path_factory):
    port, router_id = free_port(), f"router-{uuid.uuid4().hex[:6]}"
    proc = start_router(tmp_path_factory.mktemp("logs"), redis_url, router_id, port,
                        max_queue_depth=MAX_QUEUE_DEPTH, max_queued_tokens=MAX_QUEUED_TOKENS, cancel_ttl_s=60)
    try:
        wait_router_ready(proc, port)
        yield proc, f"127.0.0.1:{port}"
    finally:
        assert proc.stop() == 0


def request(rid: str, model: str, prompt_len: int = 3, **params) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(request_id=rid, model=model, prompt_token_ids=list(range(1, prompt_len + 1)),
                                   parameters=common_pb2.SamplingParameters(max_tokens=4, **params))


async def route(address: str, req: router_pb2.RouteRequest, timeout: float = 10):
    """All events of a Route call, and its error (None when it ended OK)."""
    async with grpc.aio.insecure_channel(address) as channel:
        events = []
        try:
            async for event in router_pb2_grpc.RouterServiceStub(channel).Route(req, timeout=timeout):
                events.append(event)
        except grpc.aio.AioRpcError as e:
            return events, e
        return events, None


def queued(client: redis.Redis, model: str) -> int:
    stream = f"inferline:requests:{model}"
    return client.xlen(stream) - client.xpending(stream, "workers")["pending"] if client.exists(stream) else 0


def entry_ids(client: redis.Redis, model: str) -> dict[str, str]:
    return {f[b"rid"].decode(): eid.decode() for eid, f in client.xrange(f"inferline:requests:{model}")}


def entry_ids_all(client: redis.Redis, model: str) -> list[str]:
    return [eid.decode() for eid, _ in client.xrange(f"inferline:requests:{model}")]


@pytest.mark.parametrize("field", ["request_id", "model", "prompt_token_ids", "parameters"])
def test_a_request_missing_a_field_is_invalid(router, model, field):
    req = request("r-invalid", model)
    req.ClearField(field)
    _, error = asyncio.run(route(router[1], req))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(field)


def test_a_model_without_a_live_worker_is_not_found(router, client):
    client.sadd("inferline:workers:ghost", "long-gone")  # its heartbeat hash expired long ago
    _, error = asyncio.run(route(router[1], request("r-ghost", "ghost")))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "'ghost'" in error.details()
    assert not client.sismember("inferline:workers:ghost", "long-gone")  # stale ids are pruned


def test_queue_limits_refuse_before_queueing_and_cancelled_calls_mark_their_entries(router, client, model):
    async def scenario():
        waiting = [asyncio.create_task(route(router[1], request(f"q{i}", model))) for i in range(MAX_QUEUE_DEPTH)]
        await asyncio.to_thread(wait_until, lambda: queued(client, model) == MAX_QUEUE_DEPTH, 5, "the queue to fill")
        _, error = await route(router[1], request("one-too-many", model))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_queue_depth=3" in error.details()
        async with grpc.aio.insecure_channel(router[1]) as channel:
            stats = await router_pb2_grpc.RouterServiceStub(channel).GetQueueStats(router_pb2.QueueStatsRequest())
        [mine] = [m for m in stats.models if m.model == model]
        assert (mine.queued, mine.queued_tokens, mine.workers) == (3, 9, 1)
        for task in waiting:  # the callers give up
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)

    asyncio.run(scenario())
    assert queued(client, model) == MAX_QUEUE_DEPTH  # the refused one was never queued
    entries = entry_ids(client, model)
    assert "one-too-many" not in entries
    for rid, entry_id in entries.items():  # each cancellation names the run it cancels
        wait_until(lambda: client.get(f"inferline:cancel:{rid}") == entry_id.encode(), 3, f"cancel:{rid}")
        assert 0 < client.ttl(f"inferline:cancel:{rid}") <= 60


def test_queued_token_budget(router, client, model):
    async def scenario():
        first = asyncio.create_task(route(router[1], request("t-first", model, prompt_len=60), timeout=1.5))
        await asyncio.to_thread(wait_until, lambda: queued(client, model) == 1, 5, "the first to queue")
        _, error = await route(router[1], request("t-second", model, prompt_len=60))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_queued_tokens=100" in error.details()
        _, first_error = await first
        assert first_error.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    asyncio.run(scenario())


def test_a_request_id_in_flight_is_refused_then_free_again(router, client, model):
    async def scenario():
        first = asyncio.create_task(route(router[1], request("dup", model), timeout=1.5))
        await asyncio.to_thread(wait_until, lambda: queued(client, model) == 1, 5, "the first to queue")
        _, error = await route(router[1], request("dup", model))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        await first  # ends by its deadline
        later = asyncio.create_task(route(router[1], request("dup", model), timeout=1.5))
        await asyncio.to_thread(wait_until, lambda: queued(client, model) == 2, 5, "the same id to queue again")
        later.cancel()

    asyncio.run(scenario())
    wait_until(lambda: client.get("inferline:cancel:dup") == max(entry_ids_all(client, model)).encode(), 3,
               "the cancellation of the latest run")


def take_entry(client: redis.Redis, model: str) -> str:
    """Play a worker: take the next entry of the model's stream."""
    [(_, [(entry_id, _fields)])] = client.xreadgroup("workers", "fake", {f"inferline:requests:{model}": ">"}, count=1)
    return entry_id.decode()


def publish(client: redis.Redis, router_id: str, entry_id: str, event: router_pb2.RouteEvent) -> None:
    client.xadd(f"inferline:results:{router_id}", {"rid": event.request_id, "seq": event.seq,
                                                    "event": event.SerializeToString(), "entry": entry_id})


def test_events_reach_the_caller_in_order_once_and_only_from_its_own_run(router, client, model):
    router_id = router[0].name

    async def scenario():
        call = asyncio.create_task(route(router[1], request("relay", model)))
        await asyncio.to_thread(wait_until, lambda: queued(client, model) == 1, 5, "the request to queue")
        entry_id = take_entry(client, model)
        ev = lambda seq, tok, **kw: router_pb2.RouteEvent(request_id="relay", seq=seq, token_ids=[tok], **kw)
        for entry, event in [(entry_id, ev(0, 10)), (entry_id, ev(2, 12)), (entry_id, ev(0, 10)),
                             ("1-1", ev(1, 99)),  # another run of the same request id: not this caller's
                             (entry_id, ev(1, 11)), (entry_id, ev(1, 11)),
                             (entry_id, ev(3, 13, finish_reason=common_pb2.FINISH_REASON_LENGTH))]:
            publish(client, router_id, entry, event)
        return await call

    events, error = asyncio.run(scenario())
    assert error is None
    assert [(e.seq, list(e.token_ids)) for e in events] == [(0, [10]), (1, [11]), (2, [12]), (3, [13])]
    assert not client.exists("inferline:cancel:relay")  # it finished: nothing to cancel


async def route_final(address: str, req: router_pb2.RouteRequest, timeout: float = 10):
    """RouteFinal's one event (as a list, like route's), and its error (None when it ended OK)."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            return [await router_pb2_grpc.RouterServiceStub(channel).RouteFinal(req, timeout=timeout)], None
        except grpc.aio.AioRpcError as e:
            return [], e


@pytest.mark.parametrize("call", ["Route final_only", "RouteFinal"])
def test_a_folded_request_gets_one_last_event_with_everything(router, client, model, call):
    """RouteRequest.final_only, or the unary RouteFinal (the gateway's Generate): ordering and
    de-duplication as above, then one event carrying every token, the text and the last event's finish
    reason and usage. An error event still ends the call with its status."""
    rid = f"folded-{call[-5:]}"

    async def scenario(error: bool):
        req = request(rid + ("-err" if error else ""), model)
        req.final_only = call == "Route final_only"
        pending = asyncio.create_task(route(router[1], req) if req.final_only else route_final(router[1], req))
        await asyncio.to_thread(wait_until, lambda: queued(client, model) == 1, 5, "the request to queue")
        entry_id = take_entry(client, model)
        ev = lambda seq, tok, text, **kw: router_pb2.RouteEvent(request_id=req.request_id, seq=seq, token_ids=[tok],
                                                                text_delta=text, **kw)
        last = (router_pb2.RouteEvent(request_id=req.request_id, seq=2, error_code="INTERNAL", error_message="boom")
                if error else ev(2, 12, " c", finish_reason=common_pb2.FINISH_REASON_LENGTH,
                                 usage=common_pb2.Usage(prompt_tokens=3, completion_tokens=3)))
        for event in [ev(1, 11, " b"), ev(0, 10, "a"), ev(0, 10, "a"), last]:
            publish(client, router[0].name, entry_id, event)
        return await pending

    events, error = asyncio.run(scenario(error=False))
    assert error is None and len(events) == 1
    (folded,) = events
    assert (folded.request_id, list(folded.token_ids), folded.text_delta) == (rid, [10, 11, 12], "a b c")
    assert folded.finish_reason == common_pb2.FINISH_REASON_LENGTH and folded.usage.completion_tokens == 3
    events, error = asyncio.run(scenario(error=True))
    assert events == [] and error.code() == grpc.StatusCode.INTERNAL and error.details() == "boom"


def test_an_error_event_becomes_the_call_status(router, client, model):
    async def scenario():
        call = asyncio.create_task(route(router[1], request("err", model)))
        await asyncio.to_thread(wait_until, lambda: queued(client, model) == 1, 5, "the request to queue")
        entry_id = take_entry(client, model)
        publish(client, router[0].name, entry_id, router_pb2.RouteEvent(
            request_id="err", seq=0, error_code="INVALID_ARGUMENT", error_message="temperature: must be >= 0"))
        return await call

    events, error = asyncio.run(scenario())
    assert events == [] and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "temperature: must be >= 0"
    assert not client.exists("inferline:cancel:err")


def test_a_passed_deadline_cancels_the_queued_run(router, client, model):
    _, error = asyncio.run(route(router[1], request("late", model), timeout=0.5))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    [entry_id] = entry_ids_all(client, model)
    wait_until(lambda: client.get("inferline:cancel:late") == entry_id.encode(), 3, "the cancellation")
