"""The readiness probe: every readiness_interval_s the step loop puts a one-token greedy generation of
a short fixed prompt into the engine (worker/health.py reads the outcome).

The probe joins the running batch like any request, but it is the worker's own: it is never
published to Redis, never held in the loop's `running` (so never in free slots, the heartbeat or the
per-request metrics), and its id can never be a run id (run ids are a stream entry id, `<ms>-<seq>`,
optionally behind `<band>:`; probe ids hold a `/`). It is put in only where a new request would fit
(free slots), so a saturated worker keeps its last result as long as its loop iterates (liveness
catches a hung one); it does not hold that slot, so a request taken in the same iteration may wait
one step behind it in the engine's queue. One probe at a time: one outstanding longer than
readiness_timeout_s is a failure at once, and is aborted at the loop's next iteration (after a hung
step returns); a draining loop aborts it and starts no more.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import structlog

from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams

log = structlog.get_logger(__name__)

PROBE_ID_PREFIX = "readiness-probe/"
PROBE_PROMPT = "Hello"  # tokenized by the engine: the probe goes through the whole request path
PROBE_PARAMS = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True, detokenize=False)


def is_probe_id(request_id: str) -> bool:
    return request_id.startswith(PROBE_ID_PREFIX)


class ProbedEngine(Protocol):
    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None) -> None: ...

    def abort(self, request_id: str) -> bool: ...


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str  # ok, timeout, late, aborted, refused, no_token
    latency_s: float  # added -> final output (or -> given up on)
    finished_at: float  # time.monotonic()


@dataclass
class _Outstanding:
    request_id: str
    started_at: float
    aborted: bool = False


class ReadinessProbe:
    """Driven by the step loop between engine steps (never while a step runs); read by the health
    monitor on the event loop. Times are time.monotonic()."""

    def __init__(self, engine: ProbedEngine, interval_s: float, timeout_s: float):
        self.engine = engine
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.last: ProbeResult | None = None  # None until the first probe ended: not ready yet
        self._current: _Outstanding | None = None
        self._next_at = 0.0  # the first probe goes in at the loop's first iteration
        self._count = 0

    @property
    def in_engine(self) -> bool:
        """A probe is in the engine, its final output not seen yet (an aborted one included)."""
        return self._current is not None

    def overdue(self, now: float) -> bool:
        """A probe has been outstanding longer than timeout_s (whether or not a step is running)."""
        current = self._current
        return current is not None and not current.aborted and now - current.started_at > self.timeout_s

    def tend(self, now: float, has_room: bool, draining: bool) -> None:
        """Between two steps: abort an overdue probe (or any, when draining); put a new one in when due."""
        current = self._current
        if current is not None and not current.aborted and (draining or self.overdue(now)):
            self._abort(current, now, "aborted" if draining else "timeout")
            return
        if current is None and not draining and has_room and now >= self._next_at:
            self._start(now)

    def take_outputs(self, outputs: list[RequestOutput], now: float) -> list[RequestOutput]:
        """The step's outputs without the probe's, whose final one records the probe's result."""
        kept = []
        for out in outputs:
            if not is_probe_id(out.request_id):
                kept.append(out)
                continue
            current = self._current
            if current is None or out.request_id != current.request_id or not out.finished:
                continue
            self._current = None
            if current.aborted:
                continue  # its result was recorded when it was given up on
            latency = now - current.started_at
            if out.finish_reason == "abort" or not out.new_token_ids:
                self._record(False, "no_token", latency, now)
            elif latency > self.timeout_s:
                self._record(False, "late", latency, now)
            else:
                self._record(True, "ok", latency, now)
        return kept

    def _start(self, now: float) -> None:
        self._count += 1
        request_id = f"{PROBE_ID_PREFIX}{self._count}"
        self._next_at = now + self.interval_s
        try:
            self.engine.add_request(request_id, PROBE_PROMPT, PROBE_PARAMS)
        except Exception as e:  # an engine that refuses the probe is not ready; the loop goes on
            log.warning("readiness_probe_refused", probe=request_id, error=repr(e))
            self._record(False, "refused", 0.0, now)
            return
        self._current = _Outstanding(request_id, now)

    def _abort(self, current: _Outstanding, now: float, reason: str) -> None:
        current.aborted = True
        self._record(False, reason, now - current.started_at, now)
        if not self.engine.abort(current.request_id):  # already gone from the engine: no output will come
            self._current = None
        log.warning("readiness_probe_aborted", probe=current.request_id, reason=reason,
                    outstanding_s=round(now - current.started_at, 3))

    def _record(self, ok: bool, reason: str, latency_s: float, now: float) -> None:
        self.last = ProbeResult(ok, reason, latency_s, now)
        if not ok and reason not in ("aborted", "timeout"):
            log.warning("readiness_probe_failed", reason=reason, latency_s=round(latency_s, 3))
