"""Scale from zero, with a real router process: a model in its scale_from_zero_models that no worker
serves yet has its requests queued (the stream's backlog is what KEDA starts a worker on), a worker
started later serves them, a request whose deadline passed first is dropped by that worker instead
of run, and any other model without a worker is still NOT_FOUND. The worker runs the synthetic
engine (benchmarks only): there is no model to load. No timing assertions."""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest

from inferline.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.router.test_router_process import entry_ids_all, queued, request, route
from tests.servers import free_port
from tests.worker.processes import start_router, start_worker, wait_router_ready, wait_until, wait_worker_ready

COLD = f"cold-{uuid.uuid4().hex[:6]}"  # scale-from-zero; no worker until the test starts one
SPARE = f"spare-{uuid.uuid4().hex[:6]}"  # scale-from-zero too, never requested


@pytest.fixture(scope="module")
def router(redis_url, tmp_path_factory):
    port, router_id = free_port(), f"router-{uuid.uuid4().hex[:6]}"
    proc = start_router(tmp_path_factory.mktemp("logs"), redis_url, router_id, port,
                        scale_from_zero_models=f"{COLD},{SPARE}", cancel_ttl_s=600)
    try:
        wait_router_ready(proc, port)
        yield proc, f"127.0.0.1:{port}"
    finally:
        assert proc.stop() == 0


async def queue_stats(address: str) -> dict[str, router_pb2.ModelQueue]:
    async with grpc.aio.insecure_channel(address) as channel:
        stats = await router_pb2_grpc.RouterServiceStub(channel).GetQueueStats(router_pb2.QueueStatsRequest())
    return {m.model: m for m in stats.models}


def test_a_model_not_listed_is_still_not_found(router, client):
    typo = COLD + "x"
    _, error = asyncio.run(route(router[1], request("r-typo", typo)))
    assert error.code() == grpc.StatusCode.NOT_FOUND and repr(typo) in error.details()
    assert not client.exists(f"inferline:requests:{typo}")  # nothing was queued for it


def test_requests_wait_for_a_worker_to_start_and_passed_deadlines_are_not_run(router, client, redis_url,
                                                                            tmp_path: Path):
    router_proc, address = router
    stream = f"inferline:requests:{COLD}"

    async def scenario():
        # No worker, and the caller's deadline passes: DEADLINE_EXCEEDED, its entry marked cancelled.
        _, error = await route(address, request("cold-late", COLD), timeout=1)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        [late_entry] = entry_ids_all(client, COLD)
        await asyncio.to_thread(wait_until, lambda: client.get("inferline:cancel:cold-late") == late_entry.encode(),
                                5, "the late request's cancellation")

        # Still no worker: the next request is accepted and waits in the stream, taken by nobody.
        served = asyncio.create_task(route(address, request("cold-served", COLD), timeout=180))
        await asyncio.to_thread(wait_until, lambda: queued(client, COLD) == 2, 10, "the request to queue")
        assert client.xlen(stream) == 2 and client.xpending(stream, "workers")["pending"] == 0
        stats = await queue_stats(address)
        assert (stats[COLD].queued, stats[COLD].queued_tokens, stats[COLD].workers) == (2, 6, 0)
        assert (stats[SPARE].queued, stats[SPARE].workers) == (0, 0)  # listed before any request
        assert not served.done()

        # A worker starts (as KEDA would start one): it serves the waiting request, drops the late one.
        worker = start_worker(tmp_path, redis_url, COLD, f"worker-{uuid.uuid4().hex[:6]}", None,
                              engine_kind="synthetic-benchmark-only", synthetic_engine_step_ms=1,
                              store_dir=Path("/nonexistent"))
        try:
            await asyncio.to_thread(wait_worker_ready, client, worker)
            events, error = await served
            assert error is None
            assert sum(len(e.token_ids) for e in events) == 4
            assert events[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
            await asyncio.to_thread(
                wait_until, lambda: any(e.get("event") == "request_dropped_cancelled" and e.get("entry") == late_entry
                                        for e in worker.log_events()), 10, "the late request to be dropped", worker)
            assert not [e for e in worker.log_events()
                        if e.get("event") == "request_started" and e.get("entry") == late_entry]
            await asyncio.to_thread(wait_until, lambda: client.xlen(stream) == 0, 10, "the stream to empty")

            # With a live worker, requests are served as for any model.
            events, error = await route(address, request("cold-warm", COLD), timeout=60)
            assert error is None and events[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
        finally:
            assert worker.stop() == 0

    asyncio.run(scenario())
    router_events = [e["event"] for e in router_proc.log_events()
                     if e.get("event", "").startswith("model_") and e.get("model") == COLD]
    assert router_events == ["model_without_workers_queueing", "model_workers_live"]  # once per transition
