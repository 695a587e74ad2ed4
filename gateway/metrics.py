"""The gateway's Prometheus metrics: what clients see (docs/serving.md, "Metrics"). Latencies are
measured from the moment the gateway received the call, so they include tokenization, the router's
queue and the worker; `model` is set only on requests that passed validation (a known model)."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

import grpc
from prometheus_client import Counter, Gauge, Histogram

from inferline.metrics import E2E_BUCKETS, ITL_BUCKETS, TTFT_BUCKETS, count_outcome
from inferline.v1 import common_pb2, router_pb2

TIME_TO_FIRST_TOKEN = Histogram("inferline_time_to_first_token_seconds",
                                "Call received by the gateway -> first generated token relayed", ["model"],
                                buckets=TTFT_BUCKETS)
INTER_TOKEN_LATENCY = Histogram("inferline_inter_token_latency_seconds",
                                "Time between two consecutive token-carrying events of a request (one engine step, "
                                "usually one token)", ["model"], buckets=ITL_BUCKETS)
E2E_LATENCY = Histogram("inferline_e2e_request_latency_seconds",
                        "Call received by the gateway -> final event relayed (successful requests)", ["model"],
                        buckets=E2E_BUCKETS)
REQUEST_SUCCESS = Counter("inferline_request_success_total", "Requests that finished without an error status",
                          ["model", "finish_reason"])
REJECTIONS = Counter("inferline_request_rejections_total",
                     "Generate/GenerateStream calls that ended with an error status, by status name "
                     "(INVALID_ARGUMENT, RESOURCE_EXHAUSTED, NOT_FOUND, ...)", ["reason"])
CANCELLATIONS = Counter("inferline_request_cancellations_total",
                        "Requests the client gave up on: CANCELLED (it went away) or DEADLINE_EXCEEDED", ["reason"])
IN_FLIGHT = Gauge("inferline_gateway_requests_in_flight", "Generate and GenerateStream calls being served")

FINISH_REASON_NAMES = {v: k.removeprefix("FINISH_REASON_").lower()
                       for k, v in common_pb2.FinishReason.items()}


class RequestTimer:
    """Observes one request's events as the gateway relays them. `folded`: the router sends the whole
    generation as one last event (unary Generate, RouteRequest.final_only): its first token came
    (total - time to first token) of the worker's Timings before that event, and there is no gap
    between tokens to observe (streaming requests and the worker's step duration show those)."""

    def __init__(self, folded: bool = False) -> None:
        self.started = time.perf_counter()
        self.model = ""
        self.folded = folded
        self._last_token: float | None = None

    def event(self, event: router_pb2.RouteEvent) -> None:
        now = time.perf_counter()
        if event.token_ids:
            if self._last_token is None:
                ttft = now - self.started
                if self.folded:
                    ttft -= max(0.0, event.timings.total_ms - event.timings.time_to_first_token_ms) / 1000
                TIME_TO_FIRST_TOKEN.labels(self.model).observe(max(0.0, ttft))
            elif not self.folded:
                INTER_TOKEN_LATENCY.labels(self.model).observe(now - self._last_token)
            self._last_token = now
        if event.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED:
            E2E_LATENCY.labels(self.model).observe(now - self.started)
            REQUEST_SUCCESS.labels(self.model, FINISH_REASON_NAMES.get(event.finish_reason, "unknown")).inc()


@contextlib.contextmanager
def observed(context: grpc.aio.ServicerContext, folded: bool = False) -> Iterator[RequestTimer]:
    """Around a whole Generate/GenerateStream call: counts it in flight, and its rejection or
    cancellation by reason."""
    with count_outcome(context, REJECTIONS, CANCELLATIONS, IN_FLIGHT):
        yield RequestTimer(folded)
