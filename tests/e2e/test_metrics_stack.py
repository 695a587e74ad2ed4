"""Prometheus /metrics of every service on the real serving path: gateway -> router -> Redis -> worker,
real processes on loopback, each serving /metrics on a free port, scraped over HTTP. Counts only; no
timing assertions."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Iterator

import grpc
import pytest
import redis

from inferline.client import AsyncClient, Request
from tests.conftest import STORE_MODEL
from tests.servers import free_port, scrape_metrics
from tests.worker.processes import (start_gateway, start_router, start_worker, wait_router_ready, wait_until,
                                    wait_worker_ready)

pytestmark = pytest.mark.slow


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum over the samples of `name` whose labels include `labels` (0 when there are none)."""
    return sum(v for key, v in samples.get(name, {}).items() if set(labels.items()) <= set(key))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url: str, engine_store_dir: Path) -> Iterator[tuple[str, dict[str, int]]]:
    logs = tmp_path_factory.mktemp("metrics-logs")
    router_port, gateway_port = free_port(), free_port()
    ports = {"gateway": free_port(), "router": free_port(), "worker": free_port()}
    router = start_router(logs, redis_url, "metrics-router", router_port, metrics_port=ports["router"])
    worker = start_worker(logs, redis_url, STORE_MODEL, "metrics-worker", None, store_dir=engine_store_dir,
                          heartbeat_interval_s=0.5, metrics_port=ports["worker"])
    gateway = start_gateway(logs, gateway_port, router_port, engine_store_dir, metrics_port=ports["gateway"])
    client = redis.Redis.from_url(redis_url)
    try:
        wait_router_ready(router, router_port)
        wait_worker_ready(client, worker)
        wait_router_ready(gateway, gateway_port)
        yield f"127.0.0.1:{gateway_port}", ports
    finally:
        for proc in (gateway, worker, router):
            proc.stop()
        client.close()


def test_one_request_shows_up_in_every_services_metrics(stack):
    address, ports = stack

    async def calls():
        async with AsyncClient(address) as c:
            unary = await c.generate(Request(model=STORE_MODEL, prompt="Say hi.", max_tokens=4), timeout=120)
            chunks = [ch async for ch in c.generate_stream(Request(model=STORE_MODEL, prompt="Count.", max_tokens=4),
                                                           timeout=120)]
            return unary, chunks

    unary, chunks = asyncio.run(calls())
    completion = unary.usage.completion_tokens + chunks[-1].usage.completion_tokens
    assert completion > 0

    gw = scrape_metrics(ports["gateway"])
    assert value(gw, "inferline_time_to_first_token_seconds_count", model=STORE_MODEL) >= 2
    assert value(gw, "inferline_e2e_request_latency_seconds_count", model=STORE_MODEL) >= 2
    assert value(gw, "inferline_inter_token_latency_seconds_count", model=STORE_MODEL) >= 1
    assert value(gw, "inferline_request_success_total", model=STORE_MODEL) >= 2
    assert value(gw, "inferline_gateway_requests_in_flight") == 0

    rt = scrape_metrics(ports["router"])
    assert value(rt, "inferline_router_requests_queued_total", model=STORE_MODEL, band="normal") >= 2
    assert value(rt, "inferline_router_requests_in_flight") == 0

    wk = scrape_metrics(ports["worker"])
    assert value(wk, "inferline_generation_tokens_total", model=STORE_MODEL) >= completion
    assert value(wk, "inferline_prompt_tokens_total", model=STORE_MODEL) >= unary.usage.prompt_tokens
    assert value(wk, "inferline_request_queue_time_seconds_count", model=STORE_MODEL) >= 2
    assert value(wk, "inferline_worker_admission_time_seconds_count", model=STORE_MODEL) >= 2
    assert value(wk, "inferline_engine_step_duration_seconds_count", model=STORE_MODEL) >= 1
    for gauge in ("inferline_num_requests_running", "inferline_num_requests_waiting", "inferline_kv_cache_usage_ratio"):
        assert (("model", STORE_MODEL),) in wk[gauge], gauge
    assert 0 <= value(wk, "inferline_kv_cache_usage_ratio", model=STORE_MODEL) <= 1
    assert "inferline_num_preemptions_total" in wk


def test_rejections_are_counted_by_reason_where_they_happen(stack):
    address, ports = stack
    before = scrape_metrics(ports["gateway"])

    async def calls():
        errors = []
        async with AsyncClient(address) as c:
            for request in (Request(model=STORE_MODEL, prompt="hi", max_tokens=100_000),  # over the gateway's limit
                            Request(model=STORE_MODEL, prompt="hi", max_tokens=4, top_p=1.5)):
                with pytest.raises(Exception) as e:
                    await c.generate(request, timeout=60)
                errors.append(e.value)
        return errors

    errors = asyncio.run(calls())
    assert [e.code for e in errors] == [grpc.StatusCode.INVALID_ARGUMENT] * 2

    gw = scrape_metrics(ports["gateway"])
    name = "inferline_request_rejections_total"
    assert value(gw, name, reason="INVALID_ARGUMENT") - value(before, name, reason="INVALID_ARGUMENT") == 2
    assert value(gw, name, reason="RESOURCE_EXHAUSTED") == 0
    assert value(gw, "inferline_gateway_requests_in_flight") == 0


def test_a_client_deadline_is_counted_as_a_cancellation(stack):
    address, ports = stack

    async def call():
        async with AsyncClient(address) as c:
            request = Request(model=STORE_MODEL, prompt="Tell me a very long story.", max_tokens=200, min_tokens=200)
            return [chunk async for chunk in c.generate_stream(request, timeout=1.0)]

    with pytest.raises(Exception):
        asyncio.run(call())

    def cancelled() -> float:
        return value(scrape_metrics(ports["gateway"]), "inferline_request_cancellations_total")

    wait_until(cancelled, 10, "the gateway's cancellation counter")
    gw = scrape_metrics(ports["gateway"])
    reasons = {dict(k)["reason"] for k in gw["inferline_request_cancellations_total"]}
    assert reasons <= {"DEADLINE_EXCEEDED", "CANCELLED"}
    # The router counts its side too (inferline_router_cancellations_total), once grpc has closed its
    # handler: not asserted here, that may come later than the client's error.
