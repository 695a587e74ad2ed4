"""The readiness probe (worker/probe.py) and the liveness/readiness rules (worker/health.py), on the
synthetic engine with explicit clock values: no server, no Redis."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from worker.health import liveness, readiness
from worker.probe import PROBE_ID_PREFIX, ReadinessProbe, is_probe_id
from worker.settings import WorkerSettings
from worker.synthetic_engine import SyntheticEngine, SyntheticEngineConfig

INTERVAL_S, TIMEOUT_S, LIVENESS_S = 5.0, 1.0, 10.0


@dataclass
class LoopState:
    """What worker/health.py reads from the step loop."""

    probe: ReadinessProbe
    draining: bool = False
    last_iteration_at: float | None = None


@dataclass
class RefusingEngine:
    """Refuses every request, as an engine that cannot take new work."""

    added: list[str] = field(default_factory=list)

    def add_request(self, request_id, prompt, params=None):
        self.added.append(request_id)
        raise RuntimeError("engine refuses")

    def abort(self, request_id) -> bool:
        return False


def new_state() -> tuple[SyntheticEngine, LoopState]:
    engine = SyntheticEngine(SyntheticEngineConfig(step_ms=0))
    return engine, LoopState(ReadinessProbe(engine, INTERVAL_S, TIMEOUT_S))


def step(engine: SyntheticEngine, state: LoopState, now: float) -> list:
    """One loop iteration at `now`: tend the probe, step, keep the outputs that are not the probe's."""
    state.probe.tend(now, has_room=True, draining=state.draining)
    kept = state.probe.take_outputs(engine.step(), now)
    state.last_iteration_at = now
    return kept


def ready(state: LoopState, now: float) -> tuple[bool, str]:
    status = readiness(state, now, LIVENESS_S)
    return status.serving, status.reason


def test_probe_ids_can_never_be_run_ids():
    assert is_probe_id(f"{PROBE_ID_PREFIX}1")
    for run_id in ("1700000000000-0", "high:1700000000000-0", "low:1-1"):
        assert not is_probe_id(run_id)
    assert "/" in PROBE_ID_PREFIX and ":" not in PROBE_ID_PREFIX  # split_run_id never sees a band in it


def test_not_ready_until_the_first_probe_produced_its_token():
    engine, state = new_state()
    assert ready(state, 0.0) == (False, "starting")  # the loop has not iterated yet
    state.last_iteration_at = 0.0
    assert ready(state, 0.0) == (False, "no_probe_yet")
    assert step(engine, state, 0.1) == []  # the probe's token, swallowed
    assert ready(state, 0.1) == (True, "probe_ok")
    assert state.probe.last.ok and not state.probe.in_engine and not engine.has_unfinished()


def test_a_probe_goes_in_every_interval_and_one_at_a_time():
    engine, state = new_state()
    step(engine, state, 0.0)
    assert engine.steps == 1
    for now in (1.0, 2.0, 4.9):  # not due yet: no request, no step
        state.probe.tend(now, has_room=True, draining=False)
        assert not engine.has_unfinished()
    state.probe.tend(5.0, has_room=True, draining=False)
    assert state.probe.in_engine
    state.probe.tend(100.0, has_room=True, draining=False)  # overdue: aborted, not doubled
    assert engine.stats().waiting + engine.stats().running == 0


def test_no_probe_while_the_batch_has_no_room():
    engine, state = new_state()
    state.probe.tend(0.0, has_room=False, draining=False)
    assert not state.probe.in_engine and not engine.has_unfinished()
    state.probe.tend(0.1, has_room=True, draining=False)
    assert state.probe.in_engine


def test_an_outstanding_probe_past_the_timeout_reads_not_ready_at_once():
    engine, state = new_state()
    step(engine, state, 0.0)
    state.probe.tend(5.0, has_room=True, draining=False)  # in the engine; its step never comes (hung)
    state.last_iteration_at = 5.0
    assert ready(state, 5.0 + TIMEOUT_S) == (True, "probe_ok")
    assert ready(state, 5.0 + TIMEOUT_S + 0.01) == (False, "probe_timeout")
    # The hung step returns late with the token: a failure, until the next probe succeeds.
    assert state.probe.take_outputs(engine.step(), 8.0) == []
    state.last_iteration_at = 8.0
    assert ready(state, 8.0) == (False, "probe_late")
    step(engine, state, 10.0)
    assert ready(state, 10.0) == (True, "probe_ok")


def test_an_overdue_probe_is_aborted_at_the_next_iteration():
    engine, state = new_state()
    state.probe.tend(0.0, has_room=True, draining=False)
    state.probe.tend(TIMEOUT_S + 0.5, has_room=True, draining=False)  # e.g. after a stuck step returned empty
    assert state.probe.last.reason == "timeout" and state.probe.in_engine  # until its abort output is seen
    outputs = engine.step()
    assert [o.finish_reason for o in outputs] == ["abort"]
    assert state.probe.take_outputs(outputs, TIMEOUT_S + 0.6) == []
    assert not state.probe.in_engine and state.probe.last.reason == "timeout"
    state.probe.tend(INTERVAL_S, has_room=True, draining=False)  # the next one, on time
    assert state.probe.in_engine


def test_draining_aborts_the_probe_and_reads_not_ready():
    engine, state = new_state()
    step(engine, state, 0.0)
    state.probe.tend(5.0, has_room=True, draining=False)
    state.draining = True
    assert ready(state, 5.0) == (False, "draining")
    state.probe.tend(5.0, has_room=True, draining=True)
    assert step(engine, state, 5.1) == []
    assert not state.probe.in_engine and not engine.has_unfinished()
    state.probe.tend(20.0, has_room=True, draining=True)  # a draining loop starts no more
    assert not engine.has_unfinished()


def test_a_refused_probe_reads_not_ready():
    engine = RefusingEngine()
    state = LoopState(ReadinessProbe(engine, INTERVAL_S, TIMEOUT_S), last_iteration_at=0.0)
    state.probe.tend(0.0, has_room=True, draining=False)
    assert engine.added and not state.probe.in_engine
    assert ready(state, 0.0) == (False, "probe_refused")


def test_user_outputs_pass_through_untouched():
    engine, state = new_state()
    engine.add_request("1700000000000-0", [1, 2, 3])
    outputs = step(engine, state, 0.0)
    assert [o.request_id for o in outputs] == ["1700000000000-0"]  # the probe's output is not among them
    assert state.probe.last.ok


def test_liveness_follows_the_last_iteration():
    _, state = new_state()
    assert not liveness(state, 0.0, LIVENESS_S).serving
    state.last_iteration_at = 100.0
    assert liveness(state, 100.0 + LIVENESS_S, LIVENESS_S).serving
    assert liveness(state, 100.0 + LIVENESS_S + 0.01, LIVENESS_S).reason == "loop_stalled"
    state.draining = True
    assert liveness(state, 101.0, LIVENESS_S).serving  # a draining worker is still alive


@pytest.mark.parametrize("bad", [{"readiness_timeout_s": 0}, {"readiness_interval_s": -1}, {"liveness_timeout_s": 0},
                                 {"health_port": 70000}, {"liveness_timeout_s": 0.1, "idle_block_ms": 100}])
def test_health_settings_are_validated(bad):
    with pytest.raises(ValidationError):
        WorkerSettings(engine="m", **bad)
