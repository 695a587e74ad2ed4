"""The worker's grpc.health.v1 (worker/health.py, worker/health_server.py), in process: a real StepLoop
on a real redis-server, its health served on a free port and read over gRPC. A deliberately hanging
engine must read NOT_SERVING and recover; the readiness probe never reaches Redis and leaves user
requests alone. (tests/worker/test_health_process.py runs `python -m worker` itself.)"""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from engine import SamplingParams
from inferline.redis_protocol import NORMAL, connect, requests_stream, results_stream
from inferline.v1 import common_pb2, router_pb2
from inferline.events import is_final
from worker.health import LIVENESS, READINESS
from worker.health_server import WorkerHealth
from worker.loop import StepLoop
from worker.probe import is_probe_id
from worker.queue import RequestQueue
from worker.settings import WorkerSettings
from worker.synthetic_engine import SyntheticEngine, SyntheticEngineConfig

ROUTER = "health-test-router"


class DeliberatelyHangingEngine:
    """TEST DOUBLE THAT HANGS ON PURPOSE: the synthetic engine, except that while `hang()` is in effect
    every step() blocks (in the loop's worker thread) until `release()`: an engine wedged in a step
    (a stuck kernel, a deadlock). Records every request id it was given."""

    def __init__(self, step_ms: float = 1.0):
        self.inner = SyntheticEngine(SyntheticEngineConfig(step_ms=step_ms, max_batch_size=4))
        self.config = self.inner.config
        self.added: list[str] = []
        self.stuck = threading.Event()  # set while a step is blocked
        self._go = threading.Event()
        self._go.set()

    def hang(self) -> None:
        self._go.clear()

    def release(self) -> None:
        self._go.set()

    def add_request(self, request_id, prompt, params=None) -> None:
        self.inner.add_request(request_id, prompt, params)
        self.added.append(request_id)

    def step(self):
        if not self._go.is_set():
            self.stuck.set()
            self._go.wait()
            self.stuck.clear()
        return self.inner.step()

    def abort(self, request_id: str) -> bool:
        return self.inner.abort(request_id)

    def has_unfinished(self) -> bool:
        return self.inner.has_unfinished()

    def stats(self):
        return self.inner.stats()


async def status(port: int, service: str) -> str | None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                                    timeout=1)
        except grpc.aio.AioRpcError:
            return None
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def wait_status(port: int, service: str, want: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while (got := await status(port, service)) != want:
        assert time.monotonic() < deadline, f"{service or '(server)'} is {got}, waited for {want}"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running_loop(redis_url: str, engine: DeliberatelyHangingEngine,
                       **settings: object) -> AsyncIterator[tuple[StepLoop, WorkerHealth]]:
    """A StepLoop over its own model's streams, with its health served on a free port."""
    model = f"health-{uuid.uuid4().hex[:8]}"
    settings = WorkerSettings(engine=model, redis_url=redis_url, health_port=0, idle_block_ms=10,
                              readiness_interval_s=0.1, readiness_timeout_s=0.5, liveness_timeout_s=3.0, **settings)
    client = connect(redis_url)
    queue = RequestQueue(client, model, "worker-h", results_maxlen=1000, results_ttl_s=60)
    await queue.ensure_group()
    loop = StepLoop(engine, queue, settings)
    health = WorkerHealth(loop, settings)
    await health.start()
    task = asyncio.create_task(loop.run())
    try:
        yield loop, health
    finally:
        engine.release()  # never leave a step blocked: the executor's thread would outlive the test
        loop.drain()
        await asyncio.wait_for(task, 10)
        await health.stop()
        await client.aclose()


def test_a_hung_engine_reads_not_serving_then_recovers(redis_url):
    engine = DeliberatelyHangingEngine()

    async def scenario():
        async with running_loop(redis_url, engine) as (loop, health):
            port = health.port
            for service in ("", READINESS, LIVENESS):
                await wait_status(port, service, "SERVING")
            assert REGISTRY.get_sample_value("inferline_worker_ready", {"model": loop.model}) == 1
            with capture_logs() as logs:
                engine.hang()
                await wait_status(port, READINESS, "NOT_SERVING")  # the probe in the stuck step is overdue
                assert await status(port, "") == "NOT_SERVING"
                assert engine.stuck.is_set()
                await wait_status(port, LIVENESS, "NOT_SERVING")  # then the loop counts as stalled
                assert REGISTRY.get_sample_value("inferline_worker_ready", {"model": loop.model}) == 0
                assert REGISTRY.get_sample_value("inferline_worker_live", {"model": loop.model}) == 0
                engine.release()
                for service in (LIVENESS, READINESS, ""):
                    await wait_status(port, service, "SERVING")
            changes = [(e["check"], e["serving"], e["reason"]) for e in logs if e["event"] == "worker_health_changed"]
            # readiness fell on the probe's timeout, before liveness gave up on the loop
            assert changes[:2] == [("readiness", False, "probe_timeout"), ("liveness", False, "loop_stalled")]
            assert ("liveness", True, "iterating") in changes and ("readiness", True, "probe_ok") in changes

    asyncio.run(scenario())


def test_readiness_is_not_serving_while_draining(redis_url):
    engine = DeliberatelyHangingEngine()

    async def scenario():
        async with running_loop(redis_url, engine) as (loop, health):
            await wait_status(health.port, READINESS, "SERVING")
            loop.drain()
            await health.refresh()  # as worker/__main__.py does on SIGTERM: at once, not at the next poll
            assert await status(health.port, READINESS) == "NOT_SERVING"

    asyncio.run(scenario())


def test_the_probe_never_reaches_redis_and_user_requests_complete(redis_url):
    engine = DeliberatelyHangingEngine(step_ms=5)

    async def scenario():
        async with running_loop(redis_url, engine) as (loop, health):
            await wait_status(health.port, READINESS, "SERVING")
            client = loop.queue.client
            generated_before = REGISTRY.get_sample_value("inferline_generation_tokens_total", {"model": loop.model})
            added_before = len(engine.added)
            request = router_pb2.RouteRequest(request_id="user-1", model=loop.model, prompt_token_ids=[5, 6, 7],
                                              parameters=common_pb2.SamplingParameters(max_tokens=60))
            await client.xadd(requests_stream(loop.model, NORMAL), {
                "rid": "user-1", "router": ROUTER, "payload": request.SerializeToString(),
                "enqueued_ms": int(time.time() * 1000)})
            events, last_id, free_slots = [], "0-0", set()
            deadline = time.monotonic() + 30
            while not (events and is_final(events[-1])):
                assert time.monotonic() < deadline, events
                free_slots.add((loop.free_slots(), len(loop.running)))
                assert not any(is_probe_id(eid) for eid in loop.running)
                for _stream, messages in await client.xread({results_stream(ROUTER): last_id}, block=50) or []:
                    for message_id, fields in messages:
                        last_id = message_id
                        assert fields[b"rid"] == b"user-1" and not is_probe_id(fields[b"entry"].decode())
                        events.append(router_pb2.RouteEvent.FromString(fields[b"event"]))
            # Probes ran alongside it (60 steps of 5 ms span several 0.1 s intervals) ...
            during = [rid for rid in engine.added[added_before:] if is_probe_id(rid)]
            assert len(during) >= 2
            # ... and the user's request got exactly what the engine alone gives it.
            reference = SyntheticEngine(SyntheticEngineConfig(step_ms=0))
            reference.add_request("r", [5, 6, 7], SamplingParams(max_tokens=60))
            want = [t for outputs in iter(reference.step, []) for o in outputs for t in o.new_token_ids]
            assert [t for e in events for t in e.token_ids] == want
            assert [e.seq for e in events] == list(range(len(events)))
            assert events[-1].usage.completion_tokens == 60
            # Free slots counted the user's request only; generated tokens too.
            assert free_slots <= {(4, 0), (3, 1)}
            generated = REGISTRY.get_sample_value("inferline_generation_tokens_total", {"model": loop.model})
            assert generated - generated_before == 60
            # Nothing in Redis names a probe.
            async for key in client.scan_iter(match="*"):
                assert b"probe" not in key
            await asyncio.sleep(0.3)  # more probes while idle: still nothing published
            assert await client.xlen(results_stream(ROUTER)) == len(events)

    asyncio.run(scenario())
