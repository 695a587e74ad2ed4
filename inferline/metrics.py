"""Prometheus pieces every service shares (docs/serving.md, "Metrics"): histogram buckets and the
/metrics HTTP server. Each service declares its own metric objects in its own metrics.py, on the
default registry (one service per process; a module is imported once, so nothing registers twice
when tests run several services' code in one process). The engine/ library never imports this."""
from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import threading
from dataclasses import dataclass
from typing import Iterator
from wsgiref.simple_server import WSGIServer

import grpc
import structlog
from grpc_interceptor.exceptions import GrpcException
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, start_http_server

from inferline.grpc.errors import as_grpc_exception

log = structlog.get_logger(__name__)

PREFIX = "inferline_"


def log_buckets(low: float, high: float, per_decade: int = 4) -> tuple[float, ...]:
    """Upper bounds from `low` to `high` (both included), `per_decade` log-spaced steps per factor 10,
    each rounded to 3 significant digits (readable `le` labels)."""
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high, got {low}, {high}")
    if per_decade < 1:
        raise ValueError(f"per_decade must be >= 1, got {per_decade}")
    steps = math.ceil(round(math.log10(high / low) * per_decade, 9))
    bounds = [float(f"{low * 10 ** (i / per_decade):.3g}") for i in range(steps)]
    # No bound just below `high` (56.2 next to 60): such a bucket says nothing.
    return tuple(b for b in bounds if b == low or b < high / 1.25) + (float(high),)


TTFT_BUCKETS = log_buckets(0.001, 60.0)         # time to first token: 1 ms .. 60 s
ITL_BUCKETS = log_buckets(0.001, 5.0)           # inter-token latency: 1 ms .. 5 s
E2E_BUCKETS = log_buckets(0.01, 600.0)          # whole request: 10 ms .. 10 min
QUEUE_BUCKETS = log_buckets(0.001, 600.0)       # waits in a queue: 1 ms .. 10 min
STEP_BUCKETS = log_buckets(0.0005, 10.0)        # one engine step: 0.5 ms .. 10 s
BUILD_BUCKETS = log_buckets(1.0, 7200.0, 2)     # an engine build: 1 s .. 2 h


@dataclass
class MetricsServer:
    port: int  # the bound port (the setting may be 0 only in tests that ask for any free port)
    _server: WSGIServer
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(port: int, host: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY,
                         service: str = "") -> MetricsServer | None:
    """Serve `registry` as Prometheus text on http://host:port/metrics (any path, in fact) from a daemon
    thread; port 0 = off (returns None). A port already taken (two workers on one host with the
    default) is logged and skipped: metrics are never a reason for a service not to serve."""
    if port == 0:
        return None
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        log.warning("metrics_port_in_use", service=service, port=port, host=host,
                    message="no /metrics for this process; give each process its own metrics_port")
        return None
    bound = server.server_address[1]
    log.info("metrics_serving", service=service, address=f"{host}:{bound}", path="/metrics")
    return MetricsServer(bound, server, thread)


DEADLINE_SLACK_S = 0.05  # a cancellation this close to the caller's deadline is the deadline's
GAVE_UP = (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)


@contextlib.contextmanager
def count_outcome(context: grpc.aio.ServicerContext, rejections: Counter, cancellations: Counter,
                  in_flight: Gauge | None = None) -> Iterator[None]:
    """Around one call of a servicer method: an error status counts in `rejections` (label `reason` =
    the status name the caller gets: what the ErrorInterceptor makes of the exception), a caller who
    gave up in `cancellations` (reason CANCELLED, or DEADLINE_EXCEEDED when its deadline had passed)."""
    if in_flight is not None:
        in_flight.inc()
    try:
        yield
    except GrpcException as e:
        (cancellations if e.status_code in GAVE_UP else rejections).labels(e.status_code.name).inc()
        raise
    except (asyncio.CancelledError, GeneratorExit):  # grpc cancels the handler: the caller went away
        remaining = context.time_remaining()
        # grpc cancels a handler when the deadline passes, with a little of it left on the server's clock
        expired = remaining is not None and remaining <= DEADLINE_SLACK_S
        cancellations.labels("DEADLINE_EXCEEDED" if expired else "CANCELLED").inc()
        raise
    except Exception as e:
        mapped = as_grpc_exception(e)
        rejections.labels(mapped.status_code.name if mapped is not None else "INTERNAL").inc()
        raise
    finally:
        if in_flight is not None:
            in_flight.dec()
