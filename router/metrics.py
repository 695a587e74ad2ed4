"""The router's Prometheus metrics (docs/serving.md, "Metrics"): admission and relaying. The time a
request waits in the queue is measured where it ends, by the worker that takes it
(inferline_request_queue_time_seconds)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge

ROUTES_QUEUED = Counter("inferline_router_requests_queued_total",
                        "Requests admitted and added to a model's queue, by priority band", ["model", "band"])
QUEUED_WITHOUT_WORKERS = Counter("inferline_router_requests_queued_without_workers_total",
                                 "Requests of a scale_from_zero_models model queued while no live worker served it "
                                 "(they wait for an autoscaler to start one)", ["model"])
REJECTIONS = Counter("inferline_router_rejections_total",
                     "Requests (Route calls, or requests on a RouteMany call) that ended with an error status, by "
                     "status name (RESOURCE_EXHAUSTED: queue full, NOT_FOUND: no live worker and not a "
                     "scale_from_zero_models model, INVALID_ARGUMENT, ALREADY_EXISTS, a worker's error event)",
                     ["reason"])
CANCELLATIONS = Counter("inferline_router_cancellations_total",
                        "Requests the caller gave up on: CANCELLED or DEADLINE_EXCEEDED (cancel:{rid} is set)",
                        ["reason"])
IN_FLIGHT = Gauge("inferline_router_requests_in_flight",
                  "Requests being served (queued or running), Route calls and RouteMany requests alike")
