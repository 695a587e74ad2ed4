"""A real worker process on the bundled SmolLM2 (exported folder, --model-path) serving requests put on
its stream directly (the test plays the router): its events equal the engine's offline greedy output."""
from __future__ import annotations

import time
import uuid

import pytest
import redis

from inferline.v1 import common_pb2
from tests.worker.processes import health_status, start_worker, wait_until, wait_worker_ready, worker_health_port
from tests.worker.workload import collect_events, enqueue, make_jobs, reference
from worker.health import LIVENESS, READINESS

pytestmark = pytest.mark.slow

MODEL = "smollm2-solo"
ROUTER = "test-router"


@pytest.fixture(scope="module")
def client(redis_url):
    with redis.Redis.from_url(redis_url) as c:
        yield c


@pytest.fixture(scope="module")
def worker(redis_url, smollm2_dir, client, tmp_path_factory):
    proc = start_worker(tmp_path_factory.mktemp("logs"), redis_url, MODEL, f"solo-{uuid.uuid4().hex[:6]}", smollm2_dir,
                        max_batch_size=4, max_seq_len=256, heartbeat_interval_s=0.5, heartbeat_ttl_s=2)
    try:
        wait_worker_ready(client, proc)
        yield proc
    finally:
        proc.stop()


def test_events_equal_the_offline_greedy_output(worker, client, smollm2_engine):
    jobs = make_jobs(smollm2_engine, 6, "solo")  # more than max_batch_size: some wait for a slot
    expected = reference(smollm2_engine, jobs)
    for job in jobs:
        enqueue(client, job.request(MODEL), ROUTER)
    events = collect_events(client, ROUTER, {j.request_id for j in jobs})
    for job in jobs:
        got, want = events[job.request_id], expected[job.request_id]
        assert [e.seq for e in got] == list(range(len(got)))
        assert [t for e in got for t in e.token_ids] == want.token_ids, job.request_id
        assert "".join(e.text_delta for e in got) == want.text
        final = got[-1]
        assert final.finish_reason == {"length": common_pb2.FINISH_REASON_LENGTH, "eos": common_pb2.FINISH_REASON_EOS}[want.finish_reason]
        assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (len(job.prompt_token_ids), len(want.token_ids))
        assert 0 <= final.timings.queue_ms <= final.timings.time_to_first_token_ms <= final.timings.total_ms
        assert all(not e.HasField("usage") for e in got[:-1])
    # every entry acknowledged and deleted, every queued token released
    assert client.xlen(f"inferline:requests:{MODEL}") == 0
    assert client.xpending(f"inferline:requests:{MODEL}", "workers")["pending"] == 0
    assert int(client.get(f"inferline:queued_tokens:{MODEL}")) == 0


def test_a_final_only_request_is_published_as_one_folded_event(worker, client, smollm2_engine):
    """RouteRequest.final_only (unary Generate): one event with every token and the text, not one per step."""
    (job,) = make_jobs(smollm2_engine, 1, "folded", max_tokens=(6,))
    want = reference(smollm2_engine, [job])[job.request_id]
    request = job.request(MODEL)
    request.final_only = True
    enqueue(client, request, ROUTER)
    (event,) = collect_events(client, ROUTER, {job.request_id})[job.request_id]
    assert event.seq == 0 and list(event.token_ids) == want.token_ids and event.text_delta == want.text
    assert event.usage.completion_tokens == len(want.token_ids) and event.timings.total_ms > 0


def test_invalid_parameters_end_with_an_error_event(worker, client, smollm2_engine):
    [job] = make_jobs(smollm2_engine, 1, "bad-temperature")
    enqueue(client, job.request(MODEL, temperature=-1.0), ROUTER)
    [event] = collect_events(client, ROUTER, {job.request_id})[job.request_id]
    assert event.error_code == "INVALID_ARGUMENT" and event.error_message.startswith("temperature")
    assert not event.token_ids
    wait_until(lambda: client.xlen(f"inferline:requests:{MODEL}") == 0, 2, "the refused entry to be acknowledged")


def test_a_request_every_worker_died_on_fails_instead_of_running_again(worker, client, smollm2_engine):
    [job] = make_jobs(smollm2_engine, 1, "poison")
    stream = f"inferline:requests:{MODEL}"
    request = job.request(MODEL)
    # Three workers took it in turn and died running it (default max_deliveries=3): the first read
    # it, each next one took it over by XAUTOCLAIM. One transaction, so the live worker cannot read it
    # first; it claims it once it looks idle.
    pipe = client.pipeline(transaction=True)
    pipe.xadd(stream, {"rid": request.request_id, "router": ROUTER, "payload": request.SerializeToString(),
                       "enqueued_ms": int(time.time() * 1000)})
    pipe.xreadgroup("workers", "dead-1", {stream: ">"}, count=1)
    for consumer in ("dead-2", "dead-3"):
        pipe.xautoclaim(stream, "workers", consumer, 0, start_id="0-0", count=1)
    entry_id = pipe.execute()[0]
    [event] = collect_events(client, ROUTER, {job.request_id})[job.request_id]
    assert event.error_code == "INTERNAL" and "3 workers died" in event.error_message
    assert not event.token_ids
    wait_until(lambda: not client.xrange(stream, entry_id, entry_id), 2, "the entry to be acknowledged")


def test_heartbeat_describes_the_worker(worker, client):
    key = f"inferline:worker:{worker.name}"
    wait_until(lambda: client.hget(key, "free_slots") == b"4", 3, "an idle heartbeat", worker)
    beat = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
    assert beat["model"] == MODEL and beat["free_slots"] == "4" and beat["kv_used"] == "0"
    assert int(beat["kv_free"]) > 0 and beat["draining"] == "0"
    assert 0 < client.pttl(key) <= 2000
    assert client.sismember(f"inferline:workers:{MODEL}", worker.name)


def test_liveness_and_readiness_serve_through_the_real_engine(worker):
    """Readiness needs a real one-token generation of SmolLM2 (the probe); it never reaches Redis."""
    port = worker_health_port(worker)
    for service in ("", LIVENESS, READINESS):
        wait_until(lambda: health_status(port, service) == "SERVING", 60, f"{service or '(server)'} SERVING", worker)
    changes = [e for e in worker.log_events() if e.get("event") == "worker_health_changed" and e["serving"]]
    assert {e["check"]: e["reason"] for e in changes} == {"liveness": "iterating", "readiness": "probe_ok"}
    assert not [e for e in worker.log_events() if "probe" in str(e.get("entry", ""))]


def test_sigterm_finishes_running_requests_then_exits_0(worker, client, smollm2_engine):
    """Last in this module: it stops the worker."""
    [job] = make_jobs(smollm2_engine, 1, "drain", max_tokens=(24,))
    enqueue(client, job.request(MODEL, ignore_eos=True), ROUTER)
    wait_until(lambda: client.xpending(f"inferline:requests:{MODEL}", "workers")["pending"], 10, "the worker to take it", worker)
    time.sleep(0.3)
    worker.proc.terminate()
    events = collect_events(client, ROUTER, {job.request_id})[job.request_id]
    assert events[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert sum(len(e.token_ids) for e in events) == 24
    assert worker.proc.wait(timeout=15) == 0
    assert not client.exists(f"inferline:worker:{worker.name}")
    assert not client.sismember(f"inferline:workers:{MODEL}", worker.name)
    assert "worker_draining" in worker.log_text()
