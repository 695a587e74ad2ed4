"""worker/queue.py against a real redis-server: taking, owning, taking over, cancelling, acknowledging."""
import asyncio
import time
import uuid

import pytest

from inferline.v1 import common_pb2, router_pb2
from worker.queue import Publication, RequestQueue
from inferline.redis_protocol import (WORKERS_GROUP, cancel_key, connect, queued_tokens_key, requests_stream,
                                   results_stream)


@pytest.fixture
def model() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


async def queue_pair(redis_url: str, model: str) -> tuple[RequestQueue, RequestQueue]:
    client = connect(redis_url)
    a = RequestQueue(client, model, "worker-a", results_maxlen=1000, results_ttl_s=60)
    b = RequestQueue(client, model, "worker-b", results_maxlen=1000, results_ttl_s=60)
    await a.ensure_group()
    return a, b


async def enqueue(queue: RequestQueue, rid: str, prompt=(1, 2, 3)) -> str:
    request = router_pb2.RouteRequest(request_id=rid, model=queue.model, prompt_token_ids=prompt,
                                      parameters=common_pb2.SamplingParameters(max_tokens=4))
    await queue.client.incrby(queued_tokens_key(queue.model), len(prompt))
    entry_id = await queue.client.xadd(requests_stream(queue.model), {
        "rid": rid, "router": "router-x", "payload": request.SerializeToString(), "enqueued_ms": 1000})
    return entry_id.decode()


def test_read_takes_at_most_count_and_releases_their_tokens(redis_url, model):
    async def scenario():
        a, _ = await queue_pair(redis_url, model)
        ids = [await enqueue(a, f"r{i}") for i in range(3)]
        taken = await a.read_new(2, None)
        assert [e.entry_id for e in taken] == ids[:2]
        assert [e.rid for e in taken] == ["r0", "r1"] and taken[0].router == "router-x"
        assert list(taken[0].request.prompt_token_ids) == [1, 2, 3] and taken[0].enqueued_ms == 1000
        assert int(await a.client.get(queued_tokens_key(model))) == 3
        assert await a.read_new(5, None) and await a.read_new(5, 10) == []
        await a.client.aclose()

    asyncio.run(scenario())


def test_touch_keeps_entries_and_reports_those_taken_over(redis_url, model):
    async def scenario():
        a, b = await queue_pair(redis_url, model)
        first, second = await enqueue(a, "r0"), await enqueue(a, "r1")
        await a.read_new(2, None)
        await asyncio.sleep(0.3)
        assert await a.touch([first, second]) == []
        assert await b.claim_dead(10, min_idle_ms=250) == []  # touched: not idle
        await asyncio.sleep(0.3)
        await a.touch([first])
        taken_over = await b.claim_dead(10, min_idle_ms=250)  # `second` went untouched: "dead"
        assert [e.entry_id for e in taken_over] == [second]
        assert await a.touch([first, second]) == [second]  # and a does not steal it back
        owners = {p["message_id"].decode(): p["consumer"].decode()
                  for p in await a.client.xpending_range(requests_stream(model), WORKERS_GROUP, "-", "+", 10)}
        assert owners == {first: "worker-a", second: "worker-b"}
        await a.client.aclose()

    asyncio.run(scenario())


def test_cancellation_matches_the_entry_not_just_the_request_id(redis_url, model):
    async def scenario():
        a, _ = await queue_pair(redis_url, model)
        old, new = await enqueue(a, "same-id"), await enqueue(a, "same-id")
        entries = await a.read_new(2, None)
        await a.client.set(cancel_key("same-id"), old, ex=60)
        assert await a.cancelled(entries) == {old}
        await a.client.aclose()

    asyncio.run(scenario())


def test_entries_come_marked_cancelled_when_their_run_was_cancelled_before_they_were_taken(redis_url, model):
    async def scenario():
        a, b = await queue_pair(redis_url, model)
        old, new, other = await enqueue(a, "same-id"), await enqueue(a, "same-id"), await enqueue(a, "r1")
        await a.client.set(cancel_key("same-id"), old, ex=60)  # the first run only
        taken = await a.read_new(3, None)
        assert [(e.entry_id, e.cancelled) for e in taken] == [(old, True), (new, False), (other, False)]
        assert int(await a.client.get(queued_tokens_key(model))) == 0  # all three left the budget
        await a.client.set(cancel_key("r1"), other, ex=60)
        await asyncio.sleep(0.3)
        taken_over = await b.claim_dead(5, min_idle_ms=250)  # a "died": b takes them over, checked again
        assert [(e.entry_id, e.cancelled) for e in taken_over] == [(old, True), (new, False), (other, True)]
        await a.client.aclose()

    asyncio.run(scenario())


def test_a_final_publication_acks_and_deletes_its_entry(redis_url, model):
    async def scenario():
        a, _ = await queue_pair(redis_url, model)
        await enqueue(a, "r0")
        [entry] = await a.read_new(1, None)
        await a.publish([Publication(entry, router_pb2.RouteEvent(request_id="r0", seq=0, token_ids=[5]), final=False)])
        assert await a.client.xlen(requests_stream(model)) == 1
        await a.publish([Publication(entry, router_pb2.RouteEvent(request_id="r0", seq=1), final=True)])
        assert await a.client.xlen(requests_stream(model)) == 0
        assert (await a.client.xpending(requests_stream(model), WORKERS_GROUP))["pending"] == 0
        events = await a.client.xrange(results_stream("router-x"))
        assert [(f[b"seq"], f[b"entry"].decode()) for _, f in events][-2:] == [(b"0", entry.entry_id), (b"1", entry.entry_id)]
        assert 0 < await a.client.ttl(results_stream("router-x")) <= 60
        await a.client.aclose()

    asyncio.run(scenario())


def test_released_entries_are_taken_over_at_once(redis_url, model):
    async def scenario():
        a, b = await queue_pair(redis_url, model)
        entry_id = await enqueue(a, "r0")
        await a.read_new(1, None)
        started = time.monotonic()
        await a.release([entry_id], idle_ms=5000)
        assert [e.entry_id for e in await b.claim_dead(5, min_idle_ms=5000)] == [entry_id]
        assert time.monotonic() - started < 1
        await a.client.aclose()

    asyncio.run(scenario())


def test_a_deleted_stream_is_made_again(redis_url, model):
    async def scenario():
        a, _ = await queue_pair(redis_url, model)
        await a.client.delete(requests_stream(model))
        assert await a.read_new(1, None) == []
        entry_id = await enqueue(a, "r0")
        assert [e.entry_id for e in await a.read_new(1, None)] == [entry_id]
        await a.client.aclose()

    asyncio.run(scenario())
