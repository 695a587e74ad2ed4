"""RouteMany on a real router process, no model (the test plays the worker): many requests on one call
each get their own events and status; a cancel command, a request's timeout and the call ending cancel
exactly the requests concerned (cancel:{rid} set); Route's statuses come back per request; on SIGTERM
the router drains its calls."""
from __future__ import annotations

import asyncio
import signal
import uuid

import grpc
import pytest
import redis

from inferline.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.router.test_router_process import entry_ids, publish, queued, request
from tests.servers import free_port
from tests.worker.processes import start_router, wait_router_ready, wait_until

MAX_QUEUE_DEPTH = 8


@pytest.fixture(scope="module")
def router(redis_url, tmp_path_factory):
    port, router_id = free_port(), f"router-{uuid.uuid4().hex[:6]}"
    proc = start_router(tmp_path_factory.mktemp("logs"), redis_url, router_id, port,
                        max_queue_depth=MAX_QUEUE_DEPTH, cancel_ttl_s=60)
    try:
        wait_router_ready(proc, port)
        yield proc, f"127.0.0.1:{port}"
    finally:
        assert proc.stop() == 0


class ManyCall:
    """A RouteMany client as bare as can be: starts and cancels as written, replies gathered by call_id."""

    def __init__(self, channel: grpc.aio.Channel):
        self.call = router_pb2_grpc.RouterServiceStub(channel).RouteMany()
        self.replies: dict[int, list[router_pb2.RouteReply]] = {}
        self.draining = False
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.call:
            self.draining = self.draining or message.draining
            for reply in message.replies:
                self.replies.setdefault(reply.call_id, []).append(reply)

    async def start(self, call_id: int, req: router_pb2.RouteRequest, timeout_s: float = 0.0) -> None:
        await self.call.write(router_pb2.RouteManyRequest(
            starts=[router_pb2.RouteStart(call_id=call_id, request=req, timeout_s=timeout_s)]))

    async def cancel(self, call_id: int) -> None:
        await self.call.write(router_pb2.RouteManyRequest(cancels=[call_id]))

    async def ended(self, call_id: int, timeout: float = 10) -> router_pb2.RouteStatus:
        async def status():
            while not (replies := self.replies.get(call_id)) or not replies[-1].HasField("status"):
                await asyncio.sleep(0.01)
            return replies[-1].status
        return await asyncio.wait_for(status(), timeout)

    def events(self, call_id: int) -> list[router_pb2.RouteEvent]:
        return [r.event for r in self.replies.get(call_id, []) if r.HasField("event")]


def take_entries(client: redis.Redis, model: str, count: int) -> dict[str, str]:
    """Play a worker: take `count` entries; request id -> entry id."""
    wait_until(lambda: client.exists(f"inferline:requests:{model}"), 5, "the first request to queue")
    taken: dict[str, str] = {}
    while len(taken) < count:
        for _, entries in client.xreadgroup("workers", "fake", {f"inferline:requests:{model}": ">"}, count=count,
                                            block=5000) or []:
            for entry_id, fields in entries:
                taken[fields[b"rid"].decode()] = entry_id.decode()
    return taken


def finish(rid: str, seq: int = 0, **kw) -> router_pb2.RouteEvent:
    return router_pb2.RouteEvent(request_id=rid, seq=seq, finish_reason=common_pb2.FINISH_REASON_LENGTH,
                                 usage=common_pb2.Usage(prompt_tokens=3, completion_tokens=1), **kw)


def test_concurrent_requests_on_one_call_get_their_own_events(router, client, model):
    router_id, address = router[0].name, router[1]
    rids = [f"many-{i}" for i in range(6)]

    async def scenario():
        async with grpc.aio.insecure_channel(address) as channel:
            many = ManyCall(channel)
            for i, rid in enumerate(rids):
                req = request(rid, model)
                req.final_only = i % 2 == 1  # half folded, as the unary Generate asks
                await many.start(i, req)
            taken = await asyncio.to_thread(take_entries, client, model, len(rids))
            for i, rid in reversed(list(enumerate(rids))):  # answered out of order
                publish(client, router_id, taken[rid], router_pb2.RouteEvent(request_id=rid, seq=0, token_ids=[i],
                                                                             text_delta=f"<{i}>"))
                publish(client, router_id, taken[rid], finish(rid, seq=1, token_ids=[100 + i]))
            return many, [await many.ended(i) for i in range(len(rids))]

    many, statuses = asyncio.run(scenario())
    assert [s.code for s in statuses] == [0] * len(rids)
    for i, rid in enumerate(rids):
        events = many.events(i)
        assert all(e.request_id == rid for e in events)
        if i % 2:  # folded: one event, with the status
            [event] = events
            assert list(event.token_ids) == [i, 100 + i] and event.text_delta == f"<{i}>"
            assert len(many.replies[i]) == 1
        else:
            assert [list(e.token_ids) for e in events] == [[i], [100 + i]]
            assert events[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
            assert many.replies[i][-1].HasField("event")  # the final event comes with the status
        assert not client.exists(f"inferline:cancel:{rid}")


def test_a_cancel_command_cancels_that_request_only(router, client, model):
    router_id, address = router[0].name, router[1]

    async def scenario():
        async with grpc.aio.insecure_channel(address) as channel:
            many = ManyCall(channel)
            await many.start(1, request("keep", model))
            await many.start(2, request("drop", model))
            await asyncio.to_thread(wait_until, lambda: queued(client, model) == 2, 5, "both to queue")
            await many.cancel(2)
            dropped = await many.ended(2)
            entry = entry_ids(client, model)["keep"]
            publish(client, router_id, entry, finish("keep"))
            return dropped, await many.ended(1)

    dropped, kept = asyncio.run(scenario())
    assert dropped.code == grpc.StatusCode.CANCELLED.value[0]
    assert kept.code == 0
    drop_entry = entry_ids(client, model)["drop"]
    wait_until(lambda: client.get("inferline:cancel:drop") == drop_entry.encode(), 3, "cancel:drop")
    assert not client.exists("inferline:cancel:keep")


def test_a_request_timeout_is_its_deadline(router, client, model):
    async def scenario():
        async with grpc.aio.insecure_channel(router[1]) as channel:
            many = ManyCall(channel)
            await many.start(7, request("late-many", model), timeout_s=0.5)
            await many.start(8, request("patient", model))  # no timeout: still running after
            status = await many.ended(7)
            await asyncio.sleep(0.2)
            return status, 8 in many.replies

    status, other_replied = asyncio.run(scenario())
    assert (status.code, status.message) == (grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded")
    assert not other_replied
    entry = entry_ids(client, model)["late-many"]
    wait_until(lambda: client.get("inferline:cancel:late-many") == entry.encode(), 3, "cancel:late-many")


def test_the_call_ending_cancels_every_request_on_it(router, client, model):
    async def scenario():
        async with grpc.aio.insecure_channel(router[1]) as channel:
            many = ManyCall(channel)
            for i in range(3):
                await many.start(i, request(f"orphan-{i}", model))
            await asyncio.to_thread(wait_until, lambda: queued(client, model) == 3, 5, "all to queue")
            many.call.cancel()  # the gateway went away

    asyncio.run(scenario())
    entries = entry_ids(client, model)
    for i in range(3):
        wait_until(lambda: client.get(f"inferline:cancel:orphan-{i}") == entries[f"orphan-{i}"].encode(), 3,
                   f"cancel:orphan-{i}")


def test_route_statuses_come_back_per_request(router, client, model):
    async def scenario():
        async with grpc.aio.insecure_channel(router[1]) as channel:
            many = ManyCall(channel)
            invalid = request("no-params", model)
            invalid.ClearField("parameters")
            await many.start(1, invalid)
            await many.start(2, request("nobody-serves", "ghost-model"))
            for i in range(MAX_QUEUE_DEPTH):
                await many.start(10 + i, request(f"fill-{i}", model))
            await asyncio.to_thread(wait_until, lambda: queued(client, model) == MAX_QUEUE_DEPTH, 5, "a full queue")
            await many.start(3, request("one-too-many-many", model))
            await many.start(4, request("fill-0", model))  # a (non-idempotent) id in flight
            return [await many.ended(i) for i in (1, 2, 3, 4)]

    invalid, not_found, full, duplicate = asyncio.run(scenario())
    assert invalid.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and invalid.message.startswith("parameters")
    assert not_found.code == grpc.StatusCode.NOT_FOUND.value[0] and "'ghost-model'" in not_found.message
    assert full.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and "max_queue_depth=8" in full.message
    assert duplicate.code == grpc.StatusCode.ALREADY_EXISTS.value[0]


def test_an_error_event_ends_its_request_with_that_status(router, client, model):
    async def scenario():
        async with grpc.aio.insecure_channel(router[1]) as channel:
            many = ManyCall(channel)
            await many.start(5, request("bad-temp", model))
            [entry] = (await asyncio.to_thread(take_entries, client, model, 1)).values()
            publish(client, router[0].name, entry, router_pb2.RouteEvent(
                request_id="bad-temp", seq=0, error_code="INVALID_ARGUMENT", error_message="temperature: must be >= 0"))
            return await many.ended(5), many.events(5)

    status, events = asyncio.run(scenario())
    assert (status.code, status.message) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], "temperature: must be >= 0")
    assert events == []


def test_on_sigterm_the_router_drains_its_calls(redis_url, client, model, tmp_path):
    port, router_id = free_port(), f"draining-{uuid.uuid4().hex[:6]}"
    proc = start_router(tmp_path, redis_url, router_id, port, shutdown_grace_s=20)
    try:
        wait_router_ready(proc, port)

        async def scenario():
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                many = ManyCall(channel)
                await many.start(1, request("in-flight", model))
                [entry] = (await asyncio.to_thread(take_entries, client, model, 1)).values()
                proc.proc.send_signal(signal.SIGTERM)
                while not many.draining:
                    await asyncio.sleep(0.01)
                await many.start(2, request("too-late", model))
                refused = await many.ended(2)
                publish(client, router_id, entry, finish("in-flight"))  # the one in flight still finishes
                finished = await many.ended(1)
                await asyncio.wait_for(many._reader, 5)  # then the router ends the call
                return refused, finished, await many.call.code()

        refused, finished, code = asyncio.run(scenario())
        assert refused.code == grpc.StatusCode.UNAVAILABLE.value[0] and "shutting down" in refused.message
        assert finished.code == 0 and code == grpc.StatusCode.OK
        assert proc.proc.wait(10) == 0  # well within its 20 s grace: nothing was left to wait for
    finally:
        proc.stop()
