"""Router + two worker processes on the bundled SmolLM2 (real Redis, loopback gRPC): concurrent
requests equal the offline greedy output; cancellation frees KV at once and drops queued requests;
a worker killed mid-generation loses nothing and duplicates nothing."""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import grpc
import pytest
import redis

from inferline.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.servers import free_port
from tests.worker.processes import ServiceProcess, start_router, start_worker, wait_router_ready, wait_until, wait_worker_ready
from tests.worker.workload import Job, make_jobs, reference

pytestmark = pytest.mark.slow

MODEL = "smollm2-e2e"
BATCH = 4  # per worker
WORKER_SETTINGS = dict(max_batch_size=BATCH, max_seq_len=256, heartbeat_interval_s=0.5, heartbeat_ttl_s=2,
                       drain_timeout_s=1)
LONG = 200  # max_tokens of requests meant to be cancelled


@dataclass
class Cluster:
    router: ServiceProcess
    address: str
    workers: list[ServiceProcess]
    client: redis.Redis
    start_worker: Callable[[], ServiceProcess]

    def replace(self, gone: ServiceProcess) -> None:
        """Start a new worker in place of one that stopped."""
        fresh = self.start_worker()
        wait_worker_ready(self.client, fresh)
        self.workers[self.workers.index(gone)] = fresh

    def stream_state(self) -> tuple[int, int]:
        """(entries in the stream, entries taken by a worker and not yet acknowledged)."""
        stream = f"inferline:requests:{MODEL}"
        return self.client.xlen(stream), self.client.xpending(stream, "workers")["pending"]

    def owners(self) -> dict[str, list[str]]:
        """Entry ids each worker holds."""
        held: dict[str, list[str]] = {}
        for p in self.client.xpending_range(f"inferline:requests:{MODEL}", "workers", "-", "+", 100):
            held.setdefault(p["consumer"].decode(), []).append(p["message_id"].decode())
        return held

    def heartbeat(self, worker: ServiceProcess) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.client.hgetall(f"inferline:worker:{worker.name}").items()}

    def log_lines(self, worker: ServiceProcess, event: str) -> list[dict]:
        return [e for e in worker.log_events() if e.get("event") == event]


@pytest.fixture(scope="module")
def cluster(redis_url, smollm2_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    port = free_port()
    router = start_router(logs, redis_url, f"router-{uuid.uuid4().hex[:6]}", port, max_queue_depth=64)
    started: list[ServiceProcess] = []

    def new_worker() -> ServiceProcess:
        started.append(start_worker(logs, redis_url, MODEL, f"w{len(started)}-{uuid.uuid4().hex[:6]}", smollm2_dir,
                                    **WORKER_SETTINGS))
        return started[-1]

    workers = [new_worker(), new_worker()]
    client = redis.Redis.from_url(redis_url)
    try:
        wait_router_ready(router, port)
        for w in workers:
            wait_worker_ready(client, w)
        yield Cluster(router, f"127.0.0.1:{port}", workers, client, new_worker)
    finally:
        for proc in [router, *started]:
            proc.stop()
        client.close()


async def route(stub: router_pb2_grpc.RouterServiceStub, job: Job, timeout: float = 90, **params) -> list[router_pb2.RouteEvent]:
    return [e async for e in stub.Route(job.request(MODEL, **params), timeout=timeout)]


def check_matches_reference(events: list[router_pb2.RouteEvent], job: Job, expected) -> None:
    assert [e.seq for e in events] == list(range(len(events))), f"{job.request_id}: seqs out of order or repeated"
    assert [t for e in events for t in e.token_ids] == expected.token_ids, job.request_id
    assert events[-1].usage.completion_tokens == len(expected.token_ids)
    assert events[-1].finish_reason in (common_pb2.FINISH_REASON_LENGTH, common_pb2.FINISH_REASON_EOS)


def test_concurrent_requests_equal_the_offline_greedy_output(cluster, smollm2_engine):
    jobs = make_jobs(smollm2_engine, 32, "many")
    expected = reference(smollm2_engine, jobs)

    async def scenario():
        async with grpc.aio.insecure_channel(cluster.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            return await asyncio.gather(*(route(stub, job) for job in jobs))

    for job, events in zip(jobs, asyncio.run(scenario())):
        check_matches_reference(events, job, expected[job.request_id])
    started = {w.name: len(cluster.log_lines(w, "request_started")) for w in cluster.workers}
    assert all(started.values()), f"both workers take requests: {started}"
    assert cluster.stream_state() == (0, 0)


def test_cancelling_a_running_request_frees_its_kv_blocks_within_a_second(cluster, smollm2_engine):
    [job] = make_jobs(smollm2_engine, 1, "cancel-running", max_tokens=(LONG,))

    async def scenario() -> float:
        async with grpc.aio.insecure_channel(cluster.address) as channel:
            call = router_pb2_grpc.RouterServiceStub(channel).Route(job.request(MODEL, ignore_eos=True), timeout=60)
            async for event in call:
                if event.seq == 2:
                    break
            call.cancel()
            return time.monotonic()

    cancelled_at = asyncio.run(scenario())
    idle = lambda: all(cluster.heartbeat(w).get("kv_used") == "0" and cluster.heartbeat(w).get("running") == "0"
                       for w in cluster.workers)
    wait_until(idle, 3, "the workers' KV blocks to be free", interval=0.02)
    assert time.monotonic() - cancelled_at < 1.5
    wait_until(lambda: cluster.stream_state() == (0, 0), 2, "the cancelled entry to be acknowledged")
    aborted = [e for w in cluster.workers for e in cluster.log_lines(w, "request_aborted")]
    assert [e["request_id"] for e in aborted] == [job.request_id]


def test_a_request_cancelled_while_queued_never_runs(cluster, smollm2_engine):
    fillers = make_jobs(smollm2_engine, 2 * BATCH, "filler", max_tokens=(LONG,))
    [victim] = make_jobs(smollm2_engine, 1, "queued-victim")

    async def scenario():
        async with grpc.aio.insecure_channel(cluster.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            busy = [asyncio.create_task(route(stub, job, ignore_eos=True)) for job in fillers]
            await asyncio.to_thread(wait_until, lambda: cluster.stream_state() == (2 * BATCH, 2 * BATCH), 20,
                                    "every slot to be taken")
            queued = asyncio.create_task(route(stub, victim))
            await asyncio.to_thread(wait_until, lambda: cluster.stream_state() == (2 * BATCH + 1, 2 * BATCH), 5,
                                    "the victim to wait in the queue")
            queued.cancel()
            await asyncio.to_thread(wait_until, lambda: cluster.client.exists(f"inferline:cancel:{victim.request_id}"),
                                    3, "the victim's cancellation")
            for task in busy:
                task.cancel()
            await asyncio.gather(queued, *busy, return_exceptions=True)

    asyncio.run(scenario())
    wait_until(lambda: cluster.stream_state() == (0, 0), 10, "every entry to be acknowledged")
    victim_lines = [e for w in cluster.workers for e in w.log_events() if e.get("request_id") == victim.request_id]
    assert [e["event"] for e in victim_lines] == ["request_dropped_cancelled"]
    results = cluster.client.xrange(f"inferline:results:{cluster.router.name}")
    victim_events = [router_pb2.RouteEvent.FromString(f[b"event"]) for _, f in results
                     if f[b"rid"].decode() == victim.request_id]
    assert [(list(e.token_ids), e.finish_reason) for e in victim_events] == [([], common_pb2.FINISH_REASON_ABORT)]


def test_a_stopped_worker_hands_what_it_could_not_finish_to_another(cluster, smollm2_engine):
    """SIGTERM: the worker drains for drain_timeout_s (1 s here), then hands the request back; the
    other worker runs it again from the start and the caller gets one correct, complete stream."""
    [job] = make_jobs(smollm2_engine, 1, "handover", max_tokens=(40,))  # ~3 s of decoding: outlives the drain
    expected = reference(smollm2_engine, [job], ignore_eos=True)[job.request_id]
    received: list[int] = []

    async def scenario():
        async with grpc.aio.insecure_channel(cluster.address) as channel:
            events = []
            async for event in router_pb2_grpc.RouterServiceStub(channel).Route(job.request(MODEL, ignore_eos=True),
                                                                                timeout=60):
                events.append(event)
                received.append(event.seq)
            return events

    async def stop_the_holder_midway():
        await asyncio.to_thread(wait_until, lambda: len(received) >= 2, 20, "tokens to flow")
        [holder_name] = cluster.owners()
        holder = next(w for w in cluster.workers if w.name == holder_name)
        holder.proc.terminate()
        return holder

    async def both():
        return await asyncio.gather(scenario(), stop_the_holder_midway())

    events, holder = asyncio.run(both())
    check_matches_reference(events, job, expected)
    assert holder.proc.wait(timeout=10) == 0
    [timeout_line] = cluster.log_lines(holder, "drain_timeout")
    assert timeout_line["handed_back"] == 1
    survivor = next(w for w in cluster.workers if w is not holder)
    assert [e["request_id"] for e in cluster.log_lines(survivor, "request_started") if e.get("taken_over")] == [job.request_id]
    cluster.replace(holder)


def test_a_worker_killed_mid_generation_loses_and_repeats_nothing(cluster, smollm2_engine):
    """Last in this module: it kills a worker."""
    jobs = make_jobs(smollm2_engine, 2 * BATCH, "survive", max_tokens=(16, 20, 24))
    expected = reference(smollm2_engine, jobs)
    rids_with_events: list[str] = []

    async def run_job(stub, job):
        events = []
        async for event in stub.Route(job.request(MODEL), timeout=90):
            events.append(event)
            rids_with_events.append(job.request_id)
        return events

    def generating_worker() -> tuple[ServiceProcess, list[str]] | None:
        """A worker holding entries, one of which has sent tokens already; and those entries."""
        rid_of = {eid.decode(): f[b"rid"].decode() for eid, f in cluster.client.xrange(f"inferline:requests:{MODEL}")}
        generating = set(rids_with_events)
        for name, entries in cluster.owners().items():
            if any(rid_of.get(e) in generating for e in entries):
                return next(w for w in cluster.workers if w.name == name), entries
        return None

    async def scenario():
        async with grpc.aio.insecure_channel(cluster.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            calls = asyncio.gather(*(run_job(stub, job) for job in jobs))
            victim, held = await asyncio.to_thread(wait_until, generating_worker, 30, "a worker to be generating")
            victim.kill()
            return victim, held, await calls

    victim, lost_entries, results = asyncio.run(scenario())
    assert lost_entries, "the killed worker was running requests"
    for job, events in zip(jobs, results):
        check_matches_reference(events, job, expected[job.request_id])
    survivor = next(w for w in cluster.workers if w is not victim)
    taken_over = [e["entry"] for e in cluster.log_lines(survivor, "request_started") if e.get("taken_over")]
    assert set(lost_entries) <= set(taken_over)
    # The re-runs started again at seq 0: the router did have duplicates to drop.
    published = [(f[b"entry"].decode(), int(f[b"seq"]))
                 for _, f in cluster.client.xrange(f"inferline:results:{cluster.router.name}")]
    assert any(published.count((entry, 0)) == 2 for entry in lost_entries)
    assert cluster.stream_state() == (0, 0)
