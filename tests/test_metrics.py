"""inferline/metrics.py: buckets, the /metrics HTTP server (scraped for real over loopback), and the
rejection/cancellation counting every servicer shares."""
from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from grpc_interceptor.exceptions import InvalidArgument, ResourceExhausted
from prometheus_client import CollectorRegistry, Counter, Gauge

from engine.errors import InvalidParameterError
from inferline.logs import request_context
from inferline.metrics import (BUILD_BUCKETS, E2E_BUCKETS, ITL_BUCKETS, QUEUE_BUCKETS, TTFT_BUCKETS, count_outcome,
                               log_buckets, start_metrics_server)
from tests.servers import free_port, scrape_metrics


def test_log_buckets_span_their_range_in_increasing_readable_steps():
    b = log_buckets(0.001, 60.0)
    assert b[0] == 0.001 and b[-1] == 60.0
    assert list(b) == sorted(set(b))
    assert 0.01 in b and 0.1 in b and 1.0 in b and 10.0 in b  # 4 per decade hit every power of ten
    assert all(len(f"{x:g}".replace(".", "").lstrip("0")) <= 3 for x in b)
    assert all(later / earlier >= 1.25 for earlier, later in zip(b, b[1:]))  # no near-duplicate edges


def test_the_shared_bucket_ranges():
    assert (TTFT_BUCKETS[0], TTFT_BUCKETS[-1]) == (0.001, 60.0)
    assert (ITL_BUCKETS[0], ITL_BUCKETS[-1]) == (0.001, 5.0)
    assert (E2E_BUCKETS[0], E2E_BUCKETS[-1]) == (0.01, 600.0)
    assert (QUEUE_BUCKETS[0], QUEUE_BUCKETS[-1]) == (0.001, 600.0)
    assert BUILD_BUCKETS[-1] == 7200.0


@pytest.mark.parametrize("low,high,per_decade", [(0, 1, 4), (1, 1, 4), (2, 1, 4), (0.1, 1, 0)])
def test_log_buckets_refuse_bad_ranges(low, high, per_decade):
    with pytest.raises(ValueError):
        log_buckets(low, high, per_decade)


def test_the_server_serves_its_registry_as_prometheus_text():
    registry = CollectorRegistry()
    counter = Counter("inferline_test_things_total", "things", ["reason"], registry=registry)
    counter.labels("RESOURCE_EXHAUSTED").inc(3)
    server = start_metrics_server(free_port(), "127.0.0.1", registry, service="test")
    assert server is not None
    try:
        assert scrape_metrics(server.port)["inferline_test_things_total"] == {(("reason", "RESOURCE_EXHAUSTED"),): 3.0}
    finally:
        server.stop()


def test_port_0_is_off():
    assert start_metrics_server(0) is None


def test_a_taken_port_is_skipped_not_fatal():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert start_metrics_server(taken.getsockname()[1], "127.0.0.1", CollectorRegistry()) is None


class _Context:
    def __init__(self, remaining: float | None):
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


def _outcome(raised: BaseException | None, remaining: float | None = None) -> tuple[dict, dict, float]:
    registry = CollectorRegistry()
    rejections = Counter("rejections", "r", ["reason"], registry=registry)
    cancellations = Counter("cancellations", "c", ["reason"], registry=registry)
    in_flight = Gauge("in_flight", "f", registry=registry)

    async def call() -> None:
        with count_outcome(_Context(remaining), rejections, cancellations, in_flight):
            assert in_flight._value.get() == 1
            if raised is not None:
                raise raised

    try:
        asyncio.run(call())
    except BaseException:
        pass

    def by_reason(name: str) -> dict:
        return {s.labels["reason"]: s.value for m in registry.collect() if m.name == name
                for s in m.samples if s.name.endswith("_total")}

    return by_reason("rejections"), by_reason("cancellations"), in_flight._value.get()


@pytest.mark.parametrize("raised,remaining,rejected,cancelled", [
    (None, None, {}, {}),
    (InvalidArgument("max_tokens: ..."), None, {"INVALID_ARGUMENT": 1}, {}),
    (ResourceExhausted("queue is full"), None, {"RESOURCE_EXHAUSTED": 1}, {}),
    (InvalidParameterError("top_p", "bad"), None, {"INVALID_ARGUMENT": 1}, {}),  # mapped like the interceptor does
    (RuntimeError("a bug"), None, {"INTERNAL": 1}, {}),
    (asyncio.CancelledError(), 5.0, {}, {"CANCELLED": 1}),
    (asyncio.CancelledError(), -0.1, {}, {"DEADLINE_EXCEEDED": 1}),
])
def test_count_outcome_counts_each_ending_once_by_reason(raised, remaining, rejected, cancelled):
    rejections, cancellations, in_flight = _outcome(raised, remaining)
    assert rejections == rejected and cancellations == cancelled and in_flight == 0


def test_a_relayed_deadline_status_is_a_cancellation():
    from grpc_interceptor.exceptions import GrpcException

    _, cancellations, _ = _outcome(GrpcException("deadline", status_code=grpc.StatusCode.DEADLINE_EXCEEDED))
    assert cancellations == {"DEADLINE_EXCEEDED": 1}


def test_a_stream_closed_by_the_event_loop_at_a_yield_is_a_cancellation():
    # grpc cancels a streaming handler's task while it writes a message: the handler's async generator,
    # left at its yield, is closed later by the event loop in a task (and context) of its own.
    registry = CollectorRegistry()
    rejections = Counter("rejections", "r", ["reason"], registry=registry)
    cancellations = Counter("cancellations", "c", ["reason"], registry=registry)

    async def handler():
        with count_outcome(_Context(5.0), rejections, cancellations), request_context("rid-1"):
            yield "chunk"

    async def scenario() -> None:
        stream = handler()
        assert await anext(stream) == "chunk"
        await asyncio.create_task(stream.aclose())

    asyncio.run(scenario())
    assert cancellations.labels("CANCELLED")._value.get() == 1
    assert not [s for m in registry.collect() if m.name == "rejections" for s in m.samples]
