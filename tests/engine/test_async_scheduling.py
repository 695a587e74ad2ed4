"""Async scheduling (step N+1 launched before step N's tokens are read back) on the real SmolLM2-135M
(float32, CPU): every request gets exactly the tokens, texts, finish reasons and usage of the
synchronous engine, whatever ends it, and no KV block leaks."""
from __future__ import annotations

import pytest

from engine import SamplingParams
from tests.conftest import CHAT_PROMPTS
from tests.engine.test_engine import chat, run_staggered

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def async_engine(make_engine):
    engine = make_engine(async_scheduling=True)
    assert engine.async_scheduling
    return engine


def run_all(engine, prompts, params) -> dict[str, dict]:
    """Every output of every request, gathered step by step."""
    for i, (prompt, p) in enumerate(zip(prompts, params)):
        engine.add_request(f"r{i}", prompt, p)
    got = {f"r{i}": {"tokens": [], "text": ""} for i in range(len(prompts))}
    while engine.has_unfinished():
        for out in engine.step():
            got[out.request_id]["tokens"] += out.new_token_ids
            got[out.request_id]["text"] += out.text_delta
            if out.finished:
                got[out.request_id].update(reason=out.finish_reason, usage=out.usage)
    assert engine.stats().kv_blocks_used == 0 and engine.stats().running == 0
    return got


def test_sync_engine_is_the_cpu_default(smollm2_engine):
    assert not smollm2_engine.async_scheduling


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=16, ignore_eos=True),
    SamplingParams(max_tokens=16, ignore_eos=True, temperature=0.9, top_p=0.95, seed=7),
], ids=["greedy", "seeded-sampling"])
def test_requests_joining_a_batch_in_flight_match_the_sync_engine(async_engine, smollm2_engine, params):
    prompts = [chat(smollm2_engine, p) for p in CHAT_PROMPTS[:4]]
    assert run_staggered(async_engine, prompts, params, join_every=2) == \
        run_staggered(smollm2_engine, prompts, params, join_every=2)
    assert not async_engine.has_unfinished() and async_engine.stats().kv_blocks_used == 0


def test_every_way_of_ending_matches_the_sync_engine(async_engine, smollm2_engine):
    prompts = [chat(smollm2_engine, p) for p in CHAT_PROMPTS[:6]]
    reference = smollm2_engine.generate([prompts[3]], SamplingParams(max_tokens=20, ignore_eos=True))[0]
    params = [
        SamplingParams(max_tokens=64),  # ends by EOS: the step after it was already launched
        SamplingParams(max_tokens=9, ignore_eos=True),  # by length
        SamplingParams(max_tokens=64, min_tokens=12),
        SamplingParams(max_tokens=20, stop_token_ids=[reference.token_ids[5]]),
        SamplingParams(max_tokens=30, ignore_eos=True, stop=[reference.text[12:15]]),
        SamplingParams(max_tokens=8, ignore_eos=True, logprobs=True, top_logprobs=2),
    ]
    got, want = run_all(async_engine, prompts, params), run_all(smollm2_engine, prompts, params)
    assert got["r0"]["reason"] == "eos" and got["r3"]["reason"] == "stop"
    for rid in want:
        assert got[rid]["tokens"] == want[rid]["tokens"], rid
        assert (got[rid]["text"], got[rid]["reason"], got[rid]["usage"]) == \
            (want[rid]["text"], want[rid]["reason"], want[rid]["usage"]), rid
        assert got[rid]["usage"].completion_tokens == len(got[rid]["tokens"])


def test_penalties_and_preemption_match_the_sync_engine(make_engine, smollm2_engine):
    # Penalties read each sequence's tokens on the host: their steps are not overlapped.
    prompts = [chat(smollm2_engine, p) for p in CHAT_PROMPTS[:4]]
    params = [SamplingParams(max_tokens=20, ignore_eos=True, repetition_penalty=1.3),
              SamplingParams(max_tokens=20, ignore_eos=True, presence_penalty=1.0, frequency_penalty=0.5),
              SamplingParams(max_tokens=20, ignore_eos=True),
              SamplingParams(max_tokens=20, ignore_eos=True)]
    want = run_all(smollm2_engine, prompts, params)
    small = make_engine(block_size=4, num_kv_blocks=24, max_batch_size=4, async_scheduling=True)
    got = run_all(small, prompts, params)
    assert small.stats().preempted > 0
    assert {rid: g["tokens"] for rid, g in got.items()} == {rid: w["tokens"] for rid, w in want.items()}


def test_chunked_prefill_matches_the_sync_engine(make_engine, smollm2_engine):
    prompts = [chat(smollm2_engine, p) for p in CHAT_PROMPTS[:3]]
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    reference = [o.token_ids for o in smollm2_engine.generate(prompts, params)]
    engine = make_engine(max_num_tokens=16, max_batch_size=2, async_scheduling=True)
    assert [o.token_ids for o in engine.generate(prompts, params)] == reference


def test_abort_while_a_step_is_in_flight(async_engine):
    engine = async_engine
    engine.add_request("a", chat(engine, CHAT_PROMPTS[1]), SamplingParams(max_tokens=50, ignore_eos=True))
    engine.add_request("b", chat(engine, CHAT_PROMPTS[2]), SamplingParams(max_tokens=50, ignore_eos=True))
    reported = {"a": 0, "b": 0}
    for _ in range(4):
        for out in engine.step():
            reported[out.request_id] += len(out.new_token_ids)
    assert engine.abort("a")
    outs = {o.request_id: o for o in engine.step()}
    # The aborted request's tokens still in flight are dropped, and its usage counts what it was sent.
    assert outs["a"].finish_reason == "abort" and outs["a"].usage.completion_tokens == reported["a"] == 3
    assert "b" in outs and engine.stats().running == 1
    engine.abort("b")
    while engine.has_unfinished():
        assert all(o.request_id == "b" and o.finish_reason == "abort" for o in engine.step())
    assert engine.stats().kv_blocks_used == 0
