"""The step loop: each iteration takes as many new entries as the engine has room for, drops
cancelled ones, runs one engine step (in a thread, so heartbeats and Redis stay responsive) and
publishes what it produced. The engine's request id is the entry's run id (band + stream entry id):
one run of a request. Between steps it also tends the readiness probe (worker/probe.py), whose
outputs never reach Redis; worker/health.py reads `last_iteration_at` and the probe."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
import structlog

from engine import Engine, EngineStats, InvalidParameterError, RequestOutput
from inferline.events import EventFold
from inferline.logs import request_context
from inferline.v1 import router_pb2
from worker import metrics
from worker.probe import ReadinessProbe
from worker.queue import Publication, QueueEntry, RequestQueue
from worker.settings import WorkerSettings
from inferline.sampling import sampling_params_from_proto
from worker.translate import abort_event, error_event, event_from_output, timings_proto

log = structlog.get_logger(__name__)


def now_ms() -> float:
    return time.time() * 1000


@dataclass
class RunningRequest:
    entry: QueueEntry
    taken_ms: float
    next_seq: int = 0  # every (re)run starts at 0; the router drops seqs it already delivered
    first_token_ms: float | None = None
    scheduled: bool = False  # the engine produced output for it (inferline_worker_admission_time_seconds)
    lost: bool = False  # another worker took the entry over: stop, publish nothing, do not ack
    fold: EventFold | None = None  # RouteRequest.final_only: publish one folded event, at the end


class StepLoop:
    def __init__(self, engine: Engine, queue: RequestQueue, settings: WorkerSettings):
        self.engine = engine
        self.queue = queue
        self.settings = settings
        self.max_batch_size = engine.config.max_batch_size
        self.running: dict[str, RunningRequest] = {}  # by run id (QueueEntry.entry_id)
        self.draining = False
        # Read by the heartbeat while a step runs in its thread, so never the engine itself.
        self.stats: EngineStats = engine.stats()
        self.last_step_ms = 0.0
        self.last_step_at_ms = 0.0
        self.last_iteration_at: float | None = None  # time.monotonic() at the end of the last iteration (liveness)
        self.probe = ReadinessProbe(engine, settings.readiness_interval_s, settings.readiness_timeout_s)
        self._step_started_ms = 0.0
        self._next_autoclaim = 0.0
        self.model = settings.engine  # the `model` label of worker/metrics.py
        self._gauges = metrics.EngineGauges(self.model)
        self._gauges.update(self.stats)

    # -- what the heartbeat and main see ---------------------------------------------------------

    def free_slots(self) -> int:
        """How many more requests the engine can take now. Every running entry holds its slot until
        its final event is out; none is free while KV blocks run low (new prompts would only preempt)."""
        if self.draining:
            return 0
        stats = self.stats
        if stats.kv_blocks_free < self.settings.kv_low_watermark * stats.kv_blocks_total:
            return 0
        return max(0, self.max_batch_size - len(self.running))

    def own_entry_ids(self) -> list[str]:
        return [eid for eid, req in self.running.items() if not req.lost]

    def mark_lost(self, entry_ids: list[str]) -> None:
        """Called by the heartbeat: the loop aborts these at its next iteration (never mid-step)."""
        for eid in entry_ids:
            if (req := self.running.get(eid)) is not None and not req.lost:
                req.lost = True
                with request_context(req.entry.rid):
                    log.warning("request_taken_over_by_another_worker", entry=eid)

    def drain(self) -> None:
        if not self.draining:
            log.info("worker_draining", running=len(self.running))
        self.draining = True

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until drained: a draining loop takes nothing new and returns once nothing runs (its
        readiness probe aborted and gone from the engine too)."""
        while not (self.draining and not self.running and not self.probe.in_engine):
            await self.iterate()

    async def iterate(self) -> None:
        # First the probe, where a new entry would fit (it does not take the slot: the engine may hold
        # one request more than max_batch_size for a step); once in, the read below does not block.
        self.probe.tend(time.monotonic(), self.free_slots() > 0, self.draining)
        # The cancel keys of the entries already running are read while new ones are taken (those come
        # with theirs): two round trips at once, not one after the other, before every step.
        running = [req.entry for req in self.running.values() if not req.lost]
        if self.draining:
            cancelled = await self.queue.cancelled(running)
        else:
            cancelled, _ = await asyncio.gather(self.queue.cancelled(running), self._take())
        self._abort_cancelled_and_lost(cancelled)
        if self.engine.has_unfinished():
            started, self._step_started_ms = time.perf_counter(), now_ms()
            outputs = await asyncio.to_thread(self.engine.step)
            self.last_step_ms, self.last_step_at_ms = (time.perf_counter() - started) * 1000, now_ms()
            metrics.STEP_DURATION.labels(self.model).observe(self.last_step_ms / 1000)
            await self._publish(self.probe.take_outputs(outputs, time.monotonic()))
        self.stats = self.engine.stats()
        self._gauges.update(self.stats)
        self.last_iteration_at = time.monotonic()

    async def _take(self) -> None:
        await self._take_new()
        await self._take_over_dead()

    async def _take_new(self) -> None:
        free = self.free_slots()
        if free <= 0:
            return
        # Block only when idle: a busy engine must get back to stepping at once.
        block_ms = self.settings.idle_block_ms if not self.engine.has_unfinished() else None
        entries = await self.queue.read_new(free, block_ms)
        await self._admit(entries, taken_over=False)

    async def _take_over_dead(self) -> None:
        free = self.free_slots()
        if free <= 0 or time.monotonic() < self._next_autoclaim:
            return
        self._next_autoclaim = time.monotonic() + self.settings.heartbeat_interval_s
        entries = await self.queue.claim_dead(free, self.settings.autoclaim_min_idle_ms)
        # An entry of our own can look dead after a stall; it is ours again now, and still running.
        entries = [e for e in entries if e.entry_id not in self.running]
        limit = self.settings.max_deliveries
        await self._fail_abandoned([e for e in entries if e.deliveries > limit])
        await self._admit([e for e in entries if e.deliveries <= limit], taken_over=True)

    async def _fail_abandoned(self, entries: list[QueueEntry]) -> None:
        """A request every worker dies on (it crashes the process, or exhausts its memory) must not
        take the fleet down one worker after another: past max_deliveries it fails with INTERNAL."""
        failures = []
        for e in entries:
            with request_context(e.rid):
                log.error("request_abandoned", entry=e.entry_id, deliveries=e.deliveries)
            message = (f"request abandoned: {e.deliveries - 1} workers died while running it "
                       f"(max_deliveries={self.settings.max_deliveries})")
            failures.append(Publication(e, error_event(e.rid, 0, grpc.StatusCode.INTERNAL, message), final=True))
            metrics.REJECTIONS.labels(self.model, grpc.StatusCode.INTERNAL.name).inc()
        await self.queue.publish(failures)

    async def _admit(self, entries: list[QueueEntry], taken_over: bool) -> None:
        if not entries:
            return
        refused: list[Publication] = []
        for entry in entries:
            with request_context(entry.rid):
                if entry.cancelled:
                    log.info("request_dropped_cancelled", entry=entry.entry_id)
                    metrics.ABORTS.labels(self.model, "cancelled").inc()
                    refused.append(Publication(entry, abort_event(entry.rid, 0, entry.prompt_tokens), final=True))
                    continue
                error = self._add_to_engine(entry)
                if error is not None:
                    refused.append(Publication(entry, error, final=True))
                    metrics.REJECTIONS.labels(self.model, error.error_code).inc()
                    continue
                self.running[entry.entry_id] = RunningRequest(
                    entry, taken_ms=now_ms(), fold=EventFold() if entry.request.final_only else None)
                metrics.QUEUE_TIME.labels(self.model).observe(max(0.0, now_ms() - entry.enqueued_ms) / 1000)
                metrics.PROMPT_TOKENS.labels(self.model).inc(entry.prompt_tokens)
                log.info("request_started", entry=entry.entry_id, taken_over=taken_over,
                         prompt_tokens=entry.prompt_tokens, queue_ms=round(now_ms() - entry.enqueued_ms, 1))
        await self.queue.publish(refused)

    def _add_to_engine(self, entry: QueueEntry) -> router_pb2.RouteEvent | None:
        """Add the entry's request to the engine; an error event when it is refused."""
        if entry.request is None:
            log.warning("request_refused", reason="payload is not a RouteRequest")
            return error_event(entry.rid, 0, grpc.StatusCode.INVALID_ARGUMENT, "payload: not a RouteRequest")
        try:
            params = sampling_params_from_proto(entry.request.parameters)
            self.engine.add_request(entry.entry_id, list(entry.request.prompt_token_ids), params)
        except InvalidParameterError as e:
            log.info("request_refused", error=str(e))
            return error_event(entry.rid, 0, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Exception as e:  # a bug, not the request's fault: tell the client, keep serving others
            log.exception("request_add_failed")
            return error_event(entry.rid, 0, grpc.StatusCode.INTERNAL, f"worker could not start the request: {e!r}")
        return None

    def _abort_cancelled_and_lost(self, cancelled: set[str]) -> None:
        """Abort the running entries in `cancelled` (run ids) and those another worker took over."""
        for eid, req in self.running.items():
            if eid in cancelled or req.lost:
                if self.engine.abort(eid):  # frees its KV blocks now; its final output comes next step
                    metrics.ABORTS.labels(self.model, "lost" if req.lost else "cancelled").inc()
                    with request_context(req.entry.rid):
                        log.info("request_aborted", entry=eid, reason="lost" if req.lost else "cancelled")

    async def _publish(self, outputs: list[RequestOutput]) -> None:
        publications: list[Publication] = []
        now = now_ms()
        for out in outputs:
            req = self.running.get(out.request_id)
            if req is None:
                continue
            if out.finished:
                del self.running[out.request_id]
            if not req.scheduled and not (out.finished and out.finish_reason == "abort"):
                req.scheduled = True
                metrics.ADMISSION_TIME.labels(self.model).observe(max(0.0, self._step_started_ms - req.taken_ms) / 1000)
            metrics.GENERATION_TOKENS.labels(self.model).inc(len(out.new_token_ids))
            if req.lost:  # the new owner publishes; this run's events would only be duplicates
                continue
            if out.new_token_ids and req.first_token_ms is None:
                req.first_token_ms = now
            timings = timings_proto(req.entry.enqueued_ms, req.taken_ms, req.first_token_ms, now) if out.finished else None
            event = event_from_output(out, req.entry.rid, req.next_seq, timings)
            req.next_seq += 1
            if req.fold is not None:
                event = req.fold.add(event)  # None before the last
            if event is not None:
                publications.append(Publication(req.entry, event, final=out.finished))
            if out.finished:
                with request_context(req.entry.rid):
                    log.info("request_finished", entry=out.request_id, finish_reason=out.finish_reason,
                             completion_tokens=out.usage.completion_tokens, total_ms=round(now - req.entry.enqueued_ms, 1))
        await self.queue.publish(publications)
