"""Priority bands against a real redis-server: a worker takes high before normal before low, FIFO
within a band, never more than its free slots, except that entries waiting past the max wait come
first, oldest first; every band is walked when owning, taking over and acknowledging entries, with
(band, entry id) pairs since an entry id is unique only within its stream."""
import asyncio
import time
import uuid
from types import SimpleNamespace

import pytest

from engine import EngineStats, RequestOutput
from engine.outputs import Usage
from inferline.redis_protocol import (HIGH, LOW, NORMAL, WORKERS_GROUP, connect, queued_tokens_key,
                                      requests_stream)
from inferline.v1 import common_pb2, router_pb2
from worker.loop import StepLoop
from worker.probe import is_probe_id
from worker.queue import Publication, RequestQueue
from worker.settings import WorkerSettings


@pytest.fixture
def model() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


async def new_queue(redis_url: str, model: str, consumer: str = "worker-a", band_max_wait_ms: int = 0) -> RequestQueue:
    queue = RequestQueue(connect(redis_url), model, consumer, results_maxlen=1000, results_ttl_s=60,
                         band_max_wait_ms=band_max_wait_ms)
    await queue.ensure_group()
    return queue


async def enqueue(queue: RequestQueue, rid: str, band: str, entry_id: str = "*") -> str:
    request = router_pb2.RouteRequest(request_id=rid, model=queue.model, prompt_token_ids=[1, 2, 3],
                                      parameters=common_pb2.SamplingParameters(max_tokens=1))
    await queue.client.incrby(queued_tokens_key(queue.model), 3)
    stream_id = await queue.client.xadd(requests_stream(queue.model, band), {
        "rid": rid, "router": "router-x", "payload": request.SerializeToString(), "enqueued_ms": 1000}, id=entry_id)
    return stream_id.decode()


MIXED = [("l0", LOW), ("n0", NORMAL), ("h0", HIGH), ("l1", LOW), ("n1", NORMAL), ("h1", HIGH), ("n2", NORMAL)]


class OneAtATimeEngine:
    """max_batch_size 1; each request finishes at the step after it was added."""

    def __init__(self):
        self.config = SimpleNamespace(max_batch_size=1)
        self.added: list[str] = []
        self.unfinished: list[str] = []

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self.unfinished), waiting=0, preempted=0, kv_blocks_used=0,
                           kv_blocks_free=100, kv_blocks_total=100)

    def has_unfinished(self) -> bool:
        return bool(self.unfinished)

    def add_request(self, request_id, prompt_token_ids, params) -> None:
        self.added.append(request_id)
        self.unfinished.append(request_id)

    def abort(self, request_id) -> bool:
        return False

    def step(self) -> list[RequestOutput]:
        done, self.unfinished = self.unfinished, []
        return [RequestOutput(rid, [7], "", None, True, "length", Usage(3, 1)) for rid in done]


def test_a_busy_worker_takes_high_then_normal_then_low_fifo_within_each(redis_url, model):
    async def scenario():
        queue = await new_queue(redis_url, model)
        run_ids = {rid: (f"{band}:" if band != NORMAL else "") + await enqueue(queue, rid, band) for rid, band in MIXED}
        engine = OneAtATimeEngine()
        loop = StepLoop(engine, queue, WorkerSettings(engine=model, redis_url=redis_url, idle_block_ms=10))
        for _ in range(len(MIXED) + 1):
            await loop.iterate()
        rid_of = {run_id: rid for rid, run_id in run_ids.items()}
        # (the loop's readiness probe, worker/probe.py, goes through the engine too)
        assert [rid_of[r] for r in engine.added if not is_probe_id(r)] == ["h0", "h1", "n0", "n1", "n2", "l0", "l1"]
        assert not loop.running and int(await queue.client.get(queued_tokens_key(model))) == 0
        for band in (HIGH, NORMAL, LOW):  # every entry acknowledged and deleted
            assert await queue.client.xlen(requests_stream(model, band)) == 0
        await queue.client.aclose()

    asyncio.run(scenario())


def test_free_slots_are_filled_from_the_highest_band_first(redis_url, model):
    async def scenario():
        queue = await new_queue(redis_url, model)
        for rid, band in MIXED:
            await enqueue(queue, rid, band)
        assert [e.rid for e in await queue.read_new(3, None)] == ["h0", "h1", "n0"]
        assert [e.rid for e in await queue.read_new(3, None)] == ["n1", "n2", "l0"]
        assert [(e.rid, e.band) for e in await queue.read_new(3, 10)] == [("l1", LOW)]
        assert await queue.read_new(3, 10) == []
        await queue.client.aclose()

    asyncio.run(scenario())


def test_an_idle_worker_woken_by_several_bands_takes_no_more_than_its_slots(redis_url, model):
    async def scenario():
        queue = await new_queue(redis_url, model)
        other = await new_queue(redis_url, model, "worker-b")

        async def add_two_bands_at_once():
            await asyncio.sleep(0.2)
            async with queue.client.pipeline(transaction=True) as pipe:
                for band in (LOW, HIGH):
                    pipe.xadd(requests_stream(model, band), {"rid": band, "router": "router-x", "payload": b""})
                await pipe.execute()

        taken, _ = await asyncio.gather(queue.read_new(1, 2000), add_two_bands_at_once())
        assert [e.rid for e in taken] in (["high"], ["low"])  # one slot: one entry, the other handed back
        if taken[0].rid == "low":  # woken by the low band alone; the high one is still new
            assert [e.rid for e in await other.read_new(1, None)] == ["high"]
        else:
            assert [e.rid for e in await other.claim_dead(5, min_idle_ms=60_000)] == ["low"]
        await queue.client.aclose()
        await other.client.aclose()

    asyncio.run(scenario())


def test_the_same_entry_id_in_two_bands_stays_two_runs(redis_url, model):
    async def scenario():
        a = await new_queue(redis_url, model)
        b = await new_queue(redis_url, model, "worker-b")
        await enqueue(a, "n", NORMAL, "5-1")
        await enqueue(a, "h", HIGH, "5-1")
        await enqueue(a, "l", LOW, "5-1")
        entries = await a.read_new(3, None)
        assert [e.entry_id for e in entries] == ["high:5-1", "5-1", "low:5-1"]
        await asyncio.sleep(0.3)
        assert await a.touch(["5-1", "low:5-1"]) == []  # high:5-1 goes untouched: "dead"
        taken_over = await b.claim_dead(5, min_idle_ms=250)
        assert [e.entry_id for e in taken_over] == ["high:5-1"]
        assert await a.touch(["high:5-1", "5-1", "low:5-1"]) == ["high:5-1"]
        await b.publish([Publication(taken_over[0], router_pb2.RouteEvent(request_id="h", seq=0), final=True)])
        lengths = [await a.client.xlen(requests_stream(model, band)) for band in (HIGH, NORMAL, LOW)]
        assert lengths == [0, 1, 1]
        await a.release(["5-1", "low:5-1"], idle_ms=60_000)
        assert [e.entry_id for e in await b.claim_dead(1, min_idle_ms=60_000)] == ["5-1"]  # count respected
        assert [e.entry_id for e in await b.claim_dead(5, min_idle_ms=60_000)] == ["low:5-1"]
        pending = [(await a.client.xpending(requests_stream(model, band), WORKERS_GROUP))["pending"]
                   for band in (HIGH, NORMAL, LOW)]
        assert pending == [0, 1, 1]
        await a.client.aclose()
        await b.client.aclose()

    asyncio.run(scenario())


def test_entries_waiting_past_the_max_wait_come_first_oldest_first_across_bands(redis_url, model):
    """A steady stream of HIGH requests cannot starve the lower bands: an entry enqueued longer ago than
    the max wait (the time in its stream id) is taken before newer ones of any band, the oldest first,
    the higher band first between entries of the same millisecond; then the bands in order."""
    async def scenario():
        queue = await new_queue(redis_url, model, band_max_wait_ms=60_000)
        now_ms = int(time.time() * 1000)
        old, older, oldest = now_ms - 90_000, now_ms - 120_000, now_ms - 150_000
        await enqueue(queue, "low-oldest", LOW, f"{oldest}-0")
        await enqueue(queue, "low-old", LOW, f"{old}-0")
        await enqueue(queue, "low-fresh", LOW)
        await enqueue(queue, "normal-older", NORMAL, f"{older}-0")
        await enqueue(queue, "normal-old", NORMAL, f"{old}-0")
        for i in range(3):
            await enqueue(queue, f"high-{i}", HIGH)
        assert [e.rid for e in await queue.read_new(1, None)] == ["low-oldest"]  # never more than the slots
        assert [e.rid for e in await queue.read_new(4, None)] == ["normal-older", "normal-old", "low-old", "high-0"]
        assert [e.rid for e in await queue.read_new(5, None)] == ["high-1", "high-2", "low-fresh"]
        await queue.client.aclose()

    asyncio.run(scenario())


def test_strict_bands_let_high_traffic_pass_however_long_lower_bands_wait(redis_url, model):
    async def scenario():
        queue = await new_queue(redis_url, model, band_max_wait_ms=0)
        await enqueue(queue, "low-ancient", LOW, "1000-0")
        await enqueue(queue, "high", HIGH)
        assert [e.rid for e in await queue.read_new(1, None)] == ["high"]
        assert [e.rid for e in await queue.read_new(1, None)] == ["low-ancient"]
        await queue.client.aclose()

    asyncio.run(scenario())
