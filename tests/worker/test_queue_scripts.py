"""The worker's one-round-trip scripts against a real redis-server: a step's events for several routers,
finals in several bands, published by one command; the bands read by one command."""
import asyncio
import uuid

import pytest

from inferline.redis_protocol import HIGH, LOW, NORMAL, WORKERS_GROUP, connect, requests_stream, results_stream
from inferline.v1 import common_pb2, router_pb2
from worker.queue import Publication, RequestQueue


@pytest.fixture
def model() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


async def enqueue(queue: RequestQueue, rid: str, band: str, router: str) -> None:
    request = router_pb2.RouteRequest(request_id=rid, model=queue.model, prompt_token_ids=[1],
                                      parameters=common_pb2.SamplingParameters(max_tokens=2))
    await queue.client.xadd(requests_stream(queue.model, band), {
        "rid": rid, "router": router, "payload": request.SerializeToString(), "enqueued_ms": 1000})


def test_one_publish_fans_out_to_routers_and_acknowledges_finals_in_their_bands(redis_url, model):
    async def scenario():
        client = connect(redis_url)
        queue = RequestQueue(client, model, "w", results_maxlen=1000, results_ttl_s=60)
        await queue.ensure_group()
        routers = [f"ra-{model}", f"rb-{model}"]
        for rid, band, router in (("h", HIGH, routers[0]), ("n", NORMAL, routers[1]), ("l", LOW, routers[0])):
            await enqueue(queue, rid, band, router)
        calls = []
        original = queue._read_bands
        queue._read_bands = lambda **kw: calls.append(kw) or original(**kw)
        entries = await queue.read_new(3, None)
        assert [e.rid for e in entries] == ["h", "n", "l"] and len(calls) == 1
        by_rid = {e.rid: e for e in entries}
        step = [Publication(by_rid["h"], router_pb2.RouteEvent(request_id="h", seq=0, token_ids=[7]), final=False),
                Publication(by_rid["n"], router_pb2.RouteEvent(request_id="n", seq=0, token_ids=[8]), final=True),
                Publication(by_rid["l"], router_pb2.RouteEvent(request_id="l", seq=0, token_ids=[9]), final=True),
                Publication(by_rid["h"], router_pb2.RouteEvent(request_id="h", seq=1, token_ids=[10]), final=True)]
        await queue.publish(step)
        a = await client.xrange(results_stream(routers[0]))
        b = await client.xrange(results_stream(routers[1]))
        assert [(f[b"rid"], f[b"seq"], f[b"entry"].decode()) for _, f in a] == [
            (b"h", b"0", by_rid["h"].entry_id), (b"l", b"0", by_rid["l"].entry_id), (b"h", b"1", by_rid["h"].entry_id)]
        assert [router_pb2.RouteEvent.FromString(f[b"event"]).token_ids[0] for _, f in a] == [7, 9, 10]
        assert [(f[b"rid"], f[b"seq"]) for _, f in b] == [(b"n", b"0")]
        for router in routers:
            assert 0 < await client.ttl(results_stream(router)) <= 60
        for band in (HIGH, NORMAL, LOW):  # acknowledged and deleted
            assert await client.xlen(requests_stream(model, band)) == 0
            assert (await client.xpending(requests_stream(model, band), WORKERS_GROUP))["pending"] == 0
        await queue.publish([])  # nothing to send: no command
        await client.aclose()

    asyncio.run(scenario())
