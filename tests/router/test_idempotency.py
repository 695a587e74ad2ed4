"""Idempotent request ids across two real router processes (the test plays the worker): retries join
the running generation or replay the finished one, never generate twice; a different request under a
used id is ALREADY_EXISTS; when the owner gives up or its router dies, a follower runs the request."""
from __future__ import annotations

import asyncio
import signal
import uuid

import grpc
import pytest

from inferline.v1 import common_pb2, router_pb2
from tests.router.test_router_process import entry_ids_all, publish, queued, request, route, take_entry
from tests.servers import free_port
from tests.worker.processes import start_router, wait_router_ready, wait_until

LEASE_S = 1.0


def launch(tmp_path_factory, redis_url):
    port, router_id = free_port(), f"router-{uuid.uuid4().hex[:6]}"
    proc = start_router(tmp_path_factory.mktemp("logs"), redis_url, router_id, port,
                        idempotency_lease_s=LEASE_S, idempotency_ttl_s=60)
    wait_router_ready(proc, port)
    return proc, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def routers(redis_url, tmp_path_factory):
    started = [launch(tmp_path_factory, redis_url) for _ in range(2)]
    try:
        yield started
    finally:
        for proc, _ in started:
            assert proc.stop() == 0


def idem(rid: str, model: str, **kw) -> router_pb2.RouteRequest:
    req = request(rid, model, **kw)
    req.idempotent = True
    return req


def events_of(rid: str) -> list[router_pb2.RouteEvent]:
    return [router_pb2.RouteEvent(request_id=rid, seq=0, token_ids=[7, 8], text_delta="ab"),
            router_pb2.RouteEvent(request_id=rid, seq=1, token_ids=[9], text_delta="c",
                                  finish_reason=common_pb2.FINISH_REASON_LENGTH,
                                  usage=common_pb2.Usage(prompt_tokens=3, completion_tokens=3))]


def summary(events):
    return [(e.seq, list(e.token_ids), e.text_delta, e.finish_reason) for e in events]


def test_retries_on_any_router_join_the_running_generation_then_replay_it(routers, client, model):
    (owner_proc, owner), (_, other) = routers
    rid = f"join-{uuid.uuid4().hex[:6]}"

    async def scenario():
        first = asyncio.create_task(route(owner, idem(rid, model)))
        await asyncio.to_thread(wait_until, lambda: queued(client, model) == 1, 5, "the first to queue")
        joiners = [asyncio.create_task(route(address, idem(rid, model))) for address in (owner, other)]
        await asyncio.sleep(0.5)  # the joiners are following by now: had they queued, there would be 3
        assert queued(client, model) == 1
        entry_id = take_entry(client, model)
        for event in events_of(rid):
            publish(client, owner_proc.name, entry_id, event)
        return await asyncio.gather(first, *joiners)

    results = asyncio.run(scenario())
    for events, error in results:
        assert error is None and summary(events) == summary(events_of(rid))
    # Finished: a later retry (on the router that did not run it) replays it without queueing.
    events, error = asyncio.run(route(other, idem(rid, model)))
    assert error is None and summary(events) == summary(events_of(rid))
    assert events[-1].usage.completion_tokens == 3
    assert len(entry_ids_all(client, model)) == 1  # generated once


def test_a_used_id_with_a_different_request_is_already_exists(routers, client, model):
    (_, owner), (_, other) = routers
    rid = f"fp-{uuid.uuid4().hex[:6]}"

    async def scenario():
        first = asyncio.create_task(route(owner, idem(rid, model), timeout=2))
        await asyncio.to_thread(wait_until, lambda: queued(client, model) == 1, 5, "the first to queue")
        outcomes = [await route(other, idem(rid, model, prompt_len=5)),
                    await route(other, idem(rid, model, temperature=0.5))]
        await first
        return outcomes

    for events, error in asyncio.run(scenario()):
        assert events == [] and error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert rid in error.details() and "different request" in error.details()


def test_when_the_owner_gives_up_a_follower_runs_the_request_itself(routers, client, model):
    (_, owner), (follower_proc, other) = routers
    rid = f"handoff-{uuid.uuid4().hex[:6]}"

    async def scenario():
        first = asyncio.create_task(route(owner, idem(rid, model), timeout=1.5))  # gives up at its deadline
        await asyncio.to_thread(wait_until, lambda: queued(client, model) == 1, 5, "the first to queue")
        second = asyncio.create_task(route(other, idem(rid, model)))
        _, first_error = await first
        assert first_error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.to_thread(wait_until, lambda: len(entry_ids_all(client, model)) == 2, 5, "the second run")
        first_entry, second_entry = sorted(entry_ids_all(client, model))
        assert client.get(f"inferline:cancel:{rid}") == first_entry.encode()  # the first run was stopped
        for event in events_of(rid):
            publish(client, follower_proc.name, second_entry, event)
        return await second

    events, error = asyncio.run(scenario())
    assert error is None and summary(events) == summary(events_of(rid))


def test_when_the_owners_router_dies_its_claim_lapses_and_a_follower_runs_it(routers, client, model, redis_url,
                                                                             tmp_path_factory):
    doomed, doomed_address = launch(tmp_path_factory, redis_url)
    (follower_proc, other) = routers[1]
    rid = f"lapse-{uuid.uuid4().hex[:6]}"

    async def scenario():
        first = asyncio.create_task(route(doomed_address, idem(rid, model)))
        await asyncio.to_thread(wait_until, lambda: queued(client, model) == 1, 5, "the first to queue")
        second = asyncio.create_task(route(other, idem(rid, model)))
        await asyncio.sleep(3 * LEASE_S)  # renewed meanwhile: still one run
        assert len(entry_ids_all(client, model)) == 1
        doomed.proc.send_signal(signal.SIGKILL)
        _, first_error = await first
        assert first_error.code() == grpc.StatusCode.UNAVAILABLE
        await asyncio.to_thread(wait_until, lambda: len(entry_ids_all(client, model)) == 2, 5 + LEASE_S,
                                "the follower's own run")
        second_entry = max(entry_ids_all(client, model))
        for event in events_of(rid):
            publish(client, follower_proc.name, second_entry, event)
        return await second

    try:
        events, error = asyncio.run(scenario())
    finally:
        doomed.stop()
    assert error is None and summary(events) == summary(events_of(rid))
