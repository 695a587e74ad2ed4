"""router/admission.py against a real redis-server: requests go to their priority band's stream, the
depth limit counts the entries queued in every band of the model, live workers are counted (and that
count briefly reused), and scale-from-zero models are queued without any."""
import asyncio
import uuid

import pytest
from grpc_interceptor.exceptions import NotFound, ResourceExhausted
from structlog.testing import capture_logs

from inferline.redis_protocol import (HIGH, LOW, NORMAL, WORKERS_GROUP, connect, ensure_group, requests_stream,
                                      worker_key, workers_set)
from inferline.v1 import common_pb2, router_pb2
from router.admission import Admission


def request(model: str, priority: int) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(request_id=f"r-{uuid.uuid4().hex[:6]}", model=model, prompt_token_ids=[1, 2],
                                   parameters=common_pb2.SamplingParameters(max_tokens=4), priority=priority)


def test_requests_go_to_their_band_and_the_depth_limit_counts_every_band(redis_url):
    model = f"m-{uuid.uuid4().hex[:8]}"

    async def scenario():
        client = connect(redis_url)
        admission = Admission(client, "router-x", max_queue_depth=3, max_queued_tokens=100)
        high, normal, low = [await admission.enqueue(request(model, p)) for p in (5, 0, -2)]
        assert high.startswith("high:") and low.startswith("low:") and ":" not in normal
        for band, run in ((HIGH, high), (NORMAL, normal), (LOW, low)):
            [(stream_id, _)] = await client.xrange(requests_stream(model, band))
            assert run.endswith(stream_id.decode())
        for priority in (1, 0, -1):  # 3 queued, one per band: full, whichever band a request asks for
            with pytest.raises(ResourceExhausted, match="3 requests queued"):
                await admission.enqueue(request(model, priority))
        state = await admission.queue_state(model)
        assert (state.queued, state.queued_tokens) == (3, 6)
        # A worker takes the low entry: it leaves the queue, so one more request fits, in any band.
        await client.xreadgroup(WORKERS_GROUP, "worker-a", {requests_stream(model, LOW): ">"}, count=1)
        assert (await admission.queue_state(model)).queued == 2
        assert (await admission.enqueue(request(model, 3))).startswith("high:")
        with pytest.raises(ResourceExhausted):
            await admission.enqueue(request(model, -1))
        await client.aclose()

    asyncio.run(scenario())


def test_a_deleted_band_stream_is_made_again(redis_url):
    model = f"m-{uuid.uuid4().hex[:8]}"

    async def scenario():
        client = connect(redis_url)
        admission = Admission(client, "router-x", max_queue_depth=3, max_queued_tokens=100)
        await admission.enqueue(request(model, 0))
        await client.delete(requests_stream(model, LOW))
        assert (await admission.enqueue(request(model, -1))).startswith("low:")
        assert (await admission.queue_state(model)).queued == 2
        await client.aclose()

    asyncio.run(scenario())


def test_requests_enqueued_together_share_one_round_trip_and_are_admitted_in_order(redis_url):
    model, other = f"m-{uuid.uuid4().hex[:8]}", f"m-{uuid.uuid4().hex[:8]}"

    async def scenario():
        client = connect(redis_url)
        admission = Admission(client, "router-x", max_queue_depth=3, max_queued_tokens=100)
        calls = []
        script = admission._admit_and_enqueue

        async def counted(keys, args):
            calls.append(keys[0])
            return await script(keys=keys, args=args)

        admission._admit_and_enqueue = counted
        requests = [request(model, p) for p in (0, 5, 0, -2, 0)] + [request(other, 0)]
        outcomes = await asyncio.gather(*(admission.enqueue(r) for r in requests), return_exceptions=True)
        # One script call per model; the first three of the model fit (depth 3), in the order they came.
        assert sorted(calls) == sorted([requests_stream(model, HIGH), requests_stream(other, HIGH)])
        assert [isinstance(o, str) for o in outcomes] == [True, True, True, False, False, True]
        assert all(isinstance(o, ResourceExhausted) and "3 requests queued" in o.details for o in outcomes[3:5])
        assert outcomes[1].startswith("high:") and ":" not in outcomes[0] + outcomes[2]
        queued = await client.xrange(requests_stream(model, NORMAL))
        assert [fields[b"rid"].decode() for _, fields in queued] == [requests[0].request_id, requests[2].request_id]
        assert [run.split(":")[-1] for run in (outcomes[0], outcomes[2])] == [i.decode() for i, _ in queued]
        assert (await admission.queue_state(model)).queued_tokens == 6
        await client.aclose()

    asyncio.run(scenario())


def test_the_token_limit_counts_the_requests_before_in_the_same_round_trip(redis_url):
    model = f"m-{uuid.uuid4().hex[:8]}"

    async def scenario():
        client = connect(redis_url)
        admission = Admission(client, "router-x", max_queue_depth=10, max_queued_tokens=5)
        outcomes = await asyncio.gather(*(admission.enqueue(request(model, 0)) for _ in range(3)),
                                        return_exceptions=True)  # 2 prompt tokens each
        assert [isinstance(o, str) for o in outcomes] == [True, True, False]
        assert "4 prompt tokens queued, 2 more would exceed max_queued_tokens=5" in outcomes[2].details
        assert (await admission.queue_state(model)).queued == 2
        await client.aclose()

    asyncio.run(scenario())


def test_a_redis_error_fails_every_request_of_the_round_trip(redis_url):
    model = f"m-{uuid.uuid4().hex[:8]}"

    async def scenario():
        client = connect(redis_url)
        admission = Admission(client, "router-x", max_queue_depth=10, max_queued_tokens=100)
        script = admission._admit_and_enqueue

        async def broken(keys, args):
            raise ConnectionError("redis went away")

        admission._admit_and_enqueue = broken
        await ensure_group(client, model)
        outcomes = await asyncio.gather(*(admission.enqueue(request(model, 0)) for _ in range(3)),
                                        return_exceptions=True)
        assert [repr(o) for o in outcomes] == [repr(ConnectionError("redis went away"))] * 3
        admission._admit_and_enqueue = script  # Redis is back: the next request goes through
        assert isinstance(await admission.enqueue(request(model, 0)), str)
        await client.aclose()

    asyncio.run(scenario())


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def add_worker(client, model: str) -> str:
    """A live (fake) worker of the model: its heartbeat hash and its id in the model's set."""
    worker_id = f"w-{uuid.uuid4().hex[:6]}"
    await client.hset(worker_key(worker_id), mapping={"model": model, "free_slots": 0})
    await client.pexpire(worker_key(worker_id), 60_000)
    await client.sadd(workers_set(model), worker_id)
    return worker_id


def test_a_live_worker_count_is_reused_for_a_moment_and_a_zero_is_never_reused(redis_url):
    model = f"m-{uuid.uuid4().hex[:8]}"

    async def scenario():
        client = connect(redis_url)
        clock = FakeClock()
        admission = Admission(client, "router-x", max_queue_depth=3, max_queued_tokens=100, workers_cache_s=1.0,
                              clock=clock)
        with pytest.raises(NotFound, match=repr(model)):
            await admission.require_workers(model)
        worker = await add_worker(client, model)
        assert await admission.require_workers(model) == 1  # the 0 was not kept: seen at once
        await client.delete(worker_key(worker))  # the worker dies (its heartbeat expires)
        assert await admission.require_workers(model) == 1  # the count is reused, Redis not asked
        clock.now += 1.0
        with pytest.raises(NotFound):  # asked again once the count is old
            await admission.require_workers(model)
        assert not await client.sismember(workers_set(model), worker)  # the dead id was pruned
        await client.aclose()

    asyncio.run(scenario())


def test_scale_from_zero_models_are_queued_without_workers_and_other_models_are_not(redis_url):
    cold, typo = f"cold-{uuid.uuid4().hex[:8]}", f"colt-{uuid.uuid4().hex[:8]}"

    async def scenario():
        client = connect(redis_url)
        admission = Admission(client, "router-x", max_queue_depth=2, max_queued_tokens=100,
                              scale_from_zero_models=[cold], clock=FakeClock())
        with capture_logs() as logs:
            with pytest.raises(NotFound, match=repr(typo)):
                await admission.require_workers(typo)
            assert await admission.require_workers(cold) == 0
            await admission.enqueue(request(cold, 0))
            assert await admission.require_workers(cold) == 0
            await admission.enqueue(request(cold, 0))
            with pytest.raises(ResourceExhausted, match="max_queue_depth=2"):  # limits apply as ever
                assert await admission.require_workers(cold) == 0
                await admission.enqueue(request(cold, 0))
            state = await admission.queue_state(cold)
            assert (state.queued, state.workers) == (2, 0)
            await add_worker(client, cold)
            assert await admission.require_workers(cold) == 1  # a new worker is seen at once
        events = [e["event"] for e in logs if e["event"].startswith("model_")]
        assert events == ["model_without_workers_queueing", "model_workers_live"]  # once per transition
        await client.aclose()

    asyncio.run(scenario())
