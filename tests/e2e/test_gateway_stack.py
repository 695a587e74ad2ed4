"""The whole serving path as clients see it: gateway -> router -> Redis -> 2 workers, all real
processes on loopback, serving the bundled SmolLM2 from an engine store."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
import redis

from engine import Engine, EngineConfig, SamplingParams
from inferline.client import AsyncClient, DeadlineExceeded, Request
from tests.conftest import STORE_MODEL
from tests.servers import free_port
from tests.worker.processes import (one_torch_thread, start_gateway, start_router, start_worker, wait_router_ready,
                                    wait_until, wait_worker_ready)

pytestmark = pytest.mark.slow

WORKERS = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url: str, engine_store_dir: Path) -> Iterator[tuple[str, redis.Redis]]:
    logs = tmp_path_factory.mktemp("stack-logs")
    router_port, gateway_port = free_port(), free_port()
    router = start_router(logs, redis_url, "e2e-router", router_port)
    workers = [start_worker(logs, redis_url, STORE_MODEL, f"e2e-worker-{i}", None, store_dir=engine_store_dir,
                            heartbeat_interval_s=0.5) for i in range(WORKERS)]
    gateway = start_gateway(logs, gateway_port, router_port, engine_store_dir, redis_url=redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        wait_router_ready(router, router_port)
        for w in workers:
            wait_worker_ready(client, w)
        wait_router_ready(gateway, gateway_port)  # the same grpc.health.v1 check
        with one_torch_thread():
            yield f"127.0.0.1:{gateway_port}", client
    finally:
        for proc in (gateway, *workers, router):
            proc.stop()
        client.close()


@pytest.fixture(scope="module")
def reference_engine(smollm2_dir) -> Engine:
    return Engine(EngineConfig(model=str(smollm2_dir), max_seq_len=256, max_batch_size=8))


def test_32_concurrent_clients_get_the_offline_greedy_output_unary_and_streaming(stack, reference_engine):
    address, _ = stack
    prompts = [f"Question {i}: say something about the number {i}." for i in range(32)]
    max_tokens = [4 + i % 9 for i in range(32)]
    expected = reference_engine.generate(prompts, [SamplingParams(max_tokens=m) for m in max_tokens])

    async def run_all():
        async with AsyncClient(address) as client:
            async def unary(i):
                return await client.generate(Request(model=STORE_MODEL, prompt=prompts[i], max_tokens=max_tokens[i]),
                                             timeout=300)

            async def streamed(i):
                return [c async for c in client.generate_stream(
                    Request(model=STORE_MODEL, prompt=prompts[i], max_tokens=max_tokens[i]), timeout=300)]

            return await asyncio.gather(*(unary(i) if i % 2 else streamed(i) for i in range(32)))

    results = asyncio.run(run_all())
    for i, (result, want) in enumerate(zip(results, expected)):
        if i % 2:
            assert list(result.token_ids) == want.token_ids and result.text == want.text
            assert result.usage.completion_tokens == len(want.token_ids)
            assert result.timings.total_ms >= result.timings.time_to_first_token_ms > 0
        else:
            chunks = result
            assert [t for c in chunks for t in c.token_ids] == want.token_ids
            assert "".join(c.text_delta for c in chunks) == want.text
            assert all(not c.finish_reason for c in chunks[:-1]) and chunks[-1].finish_reason
            assert chunks[-1].usage.completion_tokens == len(want.token_ids)


def test_deadline_ends_the_call_and_frees_the_workers_kv_within_a_second(stack):
    address, client = stack

    def kv_used() -> int:
        return sum(int(client.hget(f"inferline:worker:e2e-worker-{i}", "kv_used") or 0) for i in range(WORKERS))

    async def call():
        async with AsyncClient(address) as c:
            request = Request(model=STORE_MODEL, prompt="Tell me a very long story.", max_tokens=200,
                              min_tokens=200)  # ~3 s of decoding at least: longer than the deadline
            return [chunk async for chunk in c.generate_stream(request, timeout=2.0)]

    wait_until(lambda: kv_used() == 0, 10, "idle workers")
    with pytest.raises(DeadlineExceeded):
        asyncio.run(call())
    expired = time.monotonic()
    wait_until(lambda: kv_used() == 0, 5, "KV blocks freed after the deadline")
    assert time.monotonic() - expired < 1.5  # heartbeats every 0.5 s: freed within a second, seen within 1.5


def test_bad_input_through_the_whole_stack_keeps_it_serving(stack):
    address, _ = stack

    async def calls():
        async with AsyncClient(address) as c:
            with pytest.raises(Exception) as bad:
                await c.generate(Request(model=STORE_MODEL, prompt="hi", max_tokens=8, top_p=1.5), timeout=30)
            good = await c.generate(Request(model=STORE_MODEL, prompt="hi", max_tokens=2), timeout=60)
            return bad.value, good

    bad, good = asyncio.run(calls())
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT and "top_p" in bad.message
    assert len(good.token_ids) == 2


def test_a_client_request_id_generates_once_for_concurrent_and_later_retries(stack):
    address, client = stack
    # Sampled without a seed: a second generation would almost surely differ.
    request = Request(model=STORE_MODEL, prompt="Name a colour.", max_tokens=12, temperature=1.0,
                      request_id="idempotent-e2e-1")

    async def calls():
        async with AsyncClient(address) as c:
            unary, chunks = await asyncio.gather(
                c.generate(request, timeout=120),
                _collect(c.generate_stream(request, timeout=120)))
            retry = await c.generate(request, timeout=30)
            with pytest.raises(Exception) as reused:  # the same id for another request
                await c.generate(Request(model=STORE_MODEL, prompt="Name a fruit.", max_tokens=12,
                                         request_id="idempotent-e2e-1"), timeout=30)
            return unary, chunks, retry, reused.value

    unary, chunks, retry, reused = asyncio.run(calls())
    assert [t for ch in chunks for t in ch.token_ids] == list(unary.token_ids) == list(retry.token_ids)
    assert "".join(ch.text_delta for ch in chunks) == unary.text == retry.text
    assert unary.request_id == retry.request_id == "idempotent-e2e-1"
    assert reused.code == grpc.StatusCode.ALREADY_EXISTS and "idempotent-e2e-1" in reused.message
    assert client.hget("inferline:idem:idempotent-e2e-1", "state") == b"done"


async def _collect(stream):
    return [chunk async for chunk in stream]
