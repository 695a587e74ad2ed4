"""The synthetic engine (benchmarks only): no server, no model; what the worker relies on."""
from __future__ import annotations

import time

import pytest
from structlog.testing import capture_logs

from engine import InvalidParameterError, SamplingParams
from worker.settings import WorkerSettings
from worker.startup import load_engine
from worker.synthetic_engine import ENGINE_KIND, SyntheticEngine, SyntheticEngineConfig, synthetic_token


def engine(**config) -> SyntheticEngine:
    return SyntheticEngine(SyntheticEngineConfig(**{"step_ms": 0, **config}))


def run_all(e: SyntheticEngine) -> dict[str, list]:
    outputs: dict[str, list] = {}
    while e.has_unfinished():
        for out in e.step():
            outputs.setdefault(out.request_id, []).append(out)
    return outputs


def test_each_request_gets_max_tokens_one_per_step_then_length():
    e = engine()
    for i, n in enumerate((1, 5, 16)):
        e.add_request(f"r{i}", [1, 2, 3, i], SamplingParams(max_tokens=n))
    outputs = run_all(e)
    assert e.steps == 16
    for i, n in enumerate((1, 5, 16)):
        outs = outputs[f"r{i}"]
        assert [len(o.new_token_ids) for o in outs] == [1] * n
        assert [o.finished for o in outs] == [False] * (n - 1) + [True]
        assert outs[-1].finish_reason == "length"
        assert outs[-1].usage.prompt_tokens == 4 and outs[-1].usage.completion_tokens == n
        assert "".join(o.text_delta for o in outs) == "".join(f" t{o.new_token_ids[0]}" for o in outs)


def test_token_ids_are_deterministic_per_prompt():
    def tokens(prompt) -> list[int]:
        e = engine()
        e.add_request("r", prompt, SamplingParams(max_tokens=8))
        return [t for o in run_all(e)["r"] for t in o.new_token_ids]

    assert tokens([5, 6, 7]) == tokens([5, 6, 7])
    assert tokens([5, 6, 7]) != tokens([5, 6, 8])
    assert tokens("some text") == tokens("some text")
    assert all(0 <= t < SyntheticEngineConfig().vocab_size for t in tokens([1]))


def test_batch_is_capped_at_max_batch_size_and_the_rest_wait_fifo():
    e = engine(max_batch_size=2)
    for i in range(5):
        e.add_request(f"r{i}", [i + 1], SamplingParams(max_tokens=2))
    first = e.step()
    assert sorted(o.request_id for o in first) == ["r0", "r1"]
    assert e.stats().running == 2 and e.stats().waiting == 3
    second = e.step()  # r0 and r1 finish here; r2 and r3 join at the next step
    assert all(o.finished for o in second) and e.stats().running == 0
    assert sorted(o.request_id for o in e.step()) == ["r2", "r3"]
    outputs = run_all(e)
    assert sorted(outputs) == ["r2", "r3", "r4"]
    assert e.steps == 6


def test_abort_a_running_and_a_waiting_request():
    e = engine(max_batch_size=1)
    e.add_request("running", [1], SamplingParams(max_tokens=10))
    e.add_request("waiting", [2], SamplingParams(max_tokens=10))
    e.step()
    assert e.abort("running") and e.abort("waiting")
    assert not e.abort("running") and not e.abort("unknown")
    outs = e.step()
    assert {(o.request_id, o.finish_reason, o.finished) for o in outs} == {("running", "abort", True),
                                                                          ("waiting", "abort", True)}
    assert [o.usage.completion_tokens for o in sorted(outs, key=lambda o: o.request_id)] == [1, 0]
    assert not e.has_unfinished()


def test_stop_token_ids_end_the_output_only_after_min_tokens():
    prompt = [9, 9]
    e = engine()
    e.add_request("probe", prompt, SamplingParams(max_tokens=6))
    ids = [o.new_token_ids[0] for o in run_all(e)["probe"]]
    e.add_request("early", prompt, SamplingParams(max_tokens=6, stop_token_ids=[ids[1]]))
    e.add_request("min", prompt, SamplingParams(max_tokens=6, min_tokens=3, stop_token_ids=[ids[1], ids[4]]))
    outputs = run_all(e)
    assert [o.new_token_ids[0] for o in outputs["early"]] == ids[:2] and outputs["early"][-1].finish_reason == "stop"
    assert [o.new_token_ids[0] for o in outputs["min"]] == ids[:5] and outputs["min"][-1].finish_reason == "stop"


def test_max_seq_len_and_bad_requests():
    e = engine(max_seq_len=8)
    e.add_request("r", [1] * 5, SamplingParams(max_tokens=100))
    outs = run_all(e)["r"]
    assert len(outs) == 3 and outs[-1].finish_reason == "length"
    with pytest.raises(InvalidParameterError) as err:
        e.add_request("long", [1] * 8)
    assert err.value.field == "prompt"
    with pytest.raises(InvalidParameterError):
        e.add_request("empty", [])
    e.add_request("dup", [1])
    with pytest.raises(InvalidParameterError):
        e.add_request("dup", [1])
    with pytest.raises(InvalidParameterError):
        SyntheticEngineConfig(step_ms=-1)


def test_a_step_costs_step_ms_and_an_idle_step_costs_nothing():
    e = SyntheticEngine(SyntheticEngineConfig(step_ms=20))
    started = time.perf_counter()
    assert e.step() == []
    assert time.perf_counter() - started < 0.02
    e.add_request("r", [1], SamplingParams(max_tokens=1))
    started = time.perf_counter()
    e.step()
    assert time.perf_counter() - started >= 0.02


def test_stats_never_hold_the_worker_back():
    e = engine(max_batch_size=4)
    for i in range(4):
        e.add_request(f"r{i}", [1] * 20, SamplingParams(max_tokens=3))
    e.step()
    s = e.stats()
    assert s.running == 4 and s.kv_blocks_used == 8 and s.kv_blocks_free + s.kv_blocks_used == s.kv_blocks_total
    assert s.kv_blocks_free >= 0.5 * s.kv_blocks_total


def test_detokenize_false_and_logprobs():
    e = engine()
    e.add_request("r", [3], SamplingParams(max_tokens=2, detokenize=False, logprobs=True))
    outs = run_all(e)["r"]
    assert all(o.text_delta == "" for o in outs)
    assert [o.logprobs[0].token_id for o in outs] == [t for o in outs for t in o.new_token_ids]
    assert synthetic_token(0, 1, 100) == 7919 % 100


def test_the_worker_serves_a_model_by_default_and_warns_when_synthetic():
    assert WorkerSettings(engine="m").engine_kind == "model"
    settings = WorkerSettings(engine="m", engine_kind=ENGINE_KIND, synthetic_engine_step_ms=0.5, max_batch_size=7,
                              store_dir="/nonexistent")  # the synthetic engine never reads the store
    with capture_logs() as logs:
        e = load_engine(settings)
    assert isinstance(e, SyntheticEngine) and e.kind == ENGINE_KIND
    assert e.config.max_batch_size == 7 and e.config.step_ms == 0.5
    [warning] = [x for x in logs if x["log_level"] == "warning"]
    assert warning["event"] == "synthetic_engine_benchmarks_only" and "NO model" in warning["message"]
