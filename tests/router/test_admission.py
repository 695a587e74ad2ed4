"""router/admission.py against a real redis-server: requests go to their priority band's stream, and
the depth limit counts the entries queued in every band of the model."""
import asyncio
import uuid

import pytest
from grpc_interceptor.exceptions import ResourceExhausted

from inferline.redis_protocol import HIGH, LOW, NORMAL, WORKERS_GROUP, connect, requests_stream
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
