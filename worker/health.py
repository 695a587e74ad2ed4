"""The worker's liveness and readiness, as grpc.health.v1 serves them (worker/health_server.py).

- Liveness (service LIVENESS): SERVING while the step loop iterates; NOT_SERVING once it has not
  completed an iteration for liveness_timeout_s. An engine step stuck in its thread is a loop that
  does not iterate. A draining worker is still live. Kubernetes restarts a pod whose liveness fails.
- Readiness (service READINESS, and "" for the whole server): SERVING only if the worker is live,
  not draining, and its last readiness probe (worker/probe.py, a one-token generation through the
  engine) produced its token within readiness_timeout_s. A probe outstanding longer reads NOT_SERVING
  at once, before it ends (a hung engine); so does a worker whose first probe has not ended yet (the
  engine just loaded).

Service names follow the grpc.health.v1 convention of a dotted name per checked thing; the worker
serves no other gRPC service.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from worker.probe import ReadinessProbe

LIVENESS = "inferline.worker.liveness"
READINESS = "inferline.worker.readiness"


class HealthSource(Protocol):
    """What the checks read from the step loop (worker/loop.py StepLoop)."""

    draining: bool
    last_iteration_at: float | None
    probe: ReadinessProbe


@dataclass(frozen=True)
class Status:
    serving: bool
    reason: str  # a fixed word per cause: transitions are logged with it


def liveness(loop: HealthSource, now: float, timeout_s: float) -> Status:
    if loop.last_iteration_at is None:
        return Status(False, "starting")
    if now - loop.last_iteration_at > timeout_s:
        return Status(False, "loop_stalled")
    return Status(True, "iterating")


def readiness(loop: HealthSource, now: float, liveness_timeout_s: float) -> Status:
    if loop.draining:
        return Status(False, "draining")
    live = liveness(loop, now, liveness_timeout_s)
    if not live.serving:
        return live
    if loop.probe.overdue(now):
        return Status(False, "probe_timeout")
    last = loop.probe.last
    if last is None:
        return Status(False, "no_probe_yet")
    if not last.ok:
        return Status(False, f"probe_{last.reason}")
    return Status(True, "probe_ok")
