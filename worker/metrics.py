"""The worker's Prometheus metrics (docs/serving.md, "Metrics"): its engine's load and throughput, and
how long requests waited. Every metric carries `model` (the engine this worker serves: one value per
worker), so a fleet's workers sum up per model."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from engine import EngineStats
from inferline.metrics import QUEUE_BUCKETS, STEP_BUCKETS

QUEUE_TIME = Histogram("inferline_request_queue_time_seconds",
                       "Router queue: enqueued by the router -> taken by a worker (wall clocks of both hosts)",
                       ["model"], buckets=QUEUE_BUCKETS)
ADMISSION_TIME = Histogram("inferline_worker_admission_time_seconds",
                           "Worker admission: taken from the queue -> first engine step that produced output for it",
                           ["model"], buckets=QUEUE_BUCKETS)
STEP_DURATION = Histogram("inferline_engine_step_duration_seconds", "One engine step (all running requests)",
                          ["model"], buckets=STEP_BUCKETS)
RUNNING = Gauge("inferline_num_requests_running", "Requests in the engine's running batch", ["model"])
WAITING = Gauge("inferline_num_requests_waiting", "Requests added to the engine and waiting to be scheduled",
                ["model"])
KV_CACHE_USAGE = Gauge("inferline_kv_cache_usage_ratio", "Used share of the KV cache blocks, 0 to 1", ["model"])
PREEMPTIONS = Counter("inferline_num_preemptions_total", "Sequences preempted (KV blocks ran out; recomputed later)",
                      ["model"])
PROMPT_TOKENS = Counter("inferline_prompt_tokens_total", "Prompt tokens of the requests this worker started",
                        ["model"])
GENERATION_TOKENS = Counter("inferline_generation_tokens_total", "Tokens this worker's engine generated", ["model"])
REJECTIONS = Counter("inferline_worker_rejections_total",
                     "Requests the worker ended with an error event, by status name (INVALID_ARGUMENT: the engine "
                     "refused a parameter; INTERNAL: it could not start it, or it was abandoned)", ["model", "reason"])
ABORTS = Counter("inferline_worker_aborts_total",
                 "Requests the worker stopped: cancelled (cancel:{rid} set, before or while running) or lost (another "
                 "worker took the entry over)", ["model", "reason"])

LIVE = Gauge("inferline_worker_live", "1 while the worker's liveness is SERVING (its step loop iterates), else 0",
             ["model"])
READY = Gauge("inferline_worker_ready", "1 while the worker's readiness is SERVING (its last readiness probe got its "
                                        "token in time, not draining), else 0", ["model"])


class EngineGauges:
    """Copies an EngineStats into the gauges; preemptions are a running total in the engine."""

    def __init__(self, model: str):
        self.model = model
        self._preempted = 0
        for counter in (PREEMPTIONS, PROMPT_TOKENS, GENERATION_TOKENS):  # exported (as 0) from the start
            counter.labels(model)

    def update(self, stats: EngineStats) -> None:
        RUNNING.labels(self.model).set(stats.running)
        WAITING.labels(self.model).set(stats.waiting)
        KV_CACHE_USAGE.labels(self.model).set(stats.kv_blocks_used / stats.kv_blocks_total if stats.kv_blocks_total
                                              else 0.0)
        if stats.preempted > self._preempted:
            PREEMPTIONS.labels(self.model).inc(stats.preempted - self._preempted)
        self._preempted = stats.preempted
