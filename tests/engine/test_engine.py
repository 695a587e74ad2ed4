"""Engine behaviour on the real SmolLM2-135M (float32, CPU): batching, preemption, stopping, errors."""
from __future__ import annotations

import pytest

from engine import Engine, EngineConfig, InvalidParameterError, ModelNotFoundError, SamplingParams
from tests.conftest import CHAT_PROMPTS

pytestmark = pytest.mark.slow


def chat(engine: Engine, text: str) -> list[int]:
    return engine.apply_chat_template([{"role": "user", "content": text}])


def run_staggered(engine: Engine, prompts, params, join_every: int = 3) -> dict[str, list[int]]:
    """Add one request every `join_every` steps, so each joins a batch already in flight."""
    pending = [(f"r{i}", p) for i, p in enumerate(prompts)]
    tokens = {rid: [] for rid, _ in pending}
    step = 0
    while pending or engine.has_unfinished():
        if pending and step % join_every == 0:
            rid, prompt = pending.pop(0)
            engine.add_request(rid, prompt, params)
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
        step += 1
    return tokens


def solo(engine: Engine, prompt, params) -> list[int]:
    return engine.generate([prompt], params)[0].token_ids


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=20, ignore_eos=True),
    SamplingParams(max_tokens=20, ignore_eos=True, temperature=0.9, top_p=0.95, top_k=50, seed=1234),
], ids=["greedy", "seeded-sampling"])
def test_sequences_joining_at_different_steps_match_their_solo_runs(smollm2_engine, params):
    prompts = [chat(smollm2_engine, p) for p in CHAT_PROMPTS[:5]]
    alone = [solo(smollm2_engine, p, params) for p in prompts]
    together = run_staggered(smollm2_engine, prompts, params)
    assert [together[f"r{i}"] for i in range(5)] == alone


def test_preemption_with_a_small_pool_keeps_tokens_and_leaks_no_blocks(make_engine, smollm2_engine):
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    prompts = [chat(smollm2_engine, p) for p in CHAT_PROMPTS[:4]]
    alone = [solo(smollm2_engine, p, params) for p in prompts]
    small = make_engine(block_size=4, num_kv_blocks=24, max_batch_size=4)  # each needs ~14 blocks
    outs = small.generate(prompts, params)
    assert small.stats().preempted > 0
    assert [o.token_ids for o in outs] == alone
    assert small.stats().kv_blocks_used == 0 and small.stats().kv_blocks_free == 24


@pytest.mark.parametrize("overrides", [
    {"batching": "static"},
    {"scheduler_policy": "guaranteed_no_evict", "block_size": 4, "num_kv_blocks": 30},
    {"max_num_tokens": 16},  # prompts are prefilled in chunks of at most 16 tokens
], ids=["static", "guaranteed_no_evict", "chunked-prefill"])
def test_other_batching_modes_produce_the_same_tokens(make_engine, smollm2_engine, overrides):
    params = SamplingParams(max_tokens=16, ignore_eos=True)
    prompts = [chat(smollm2_engine, p) for p in CHAT_PROMPTS[:4]]
    reference = [o.token_ids for o in smollm2_engine.generate(prompts, params)]
    engine = make_engine(max_batch_size=2, **overrides)
    assert [o.token_ids for o in engine.generate(prompts, params)] == reference
    assert engine.stats().preempted == 0 and engine.stats().kv_blocks_used == 0


def test_stop_string_across_token_boundaries_is_cut_and_not_returned(smollm2_engine):
    prompt = chat(smollm2_engine, CHAT_PROMPTS[2])
    full = smollm2_engine.generate([prompt], SamplingParams(max_tokens=40, ignore_eos=True))[0]
    tok = smollm2_engine.tokenizer
    # A stop string made of the end of one output token and the start of the next.
    pieces = [tok.decode(full.token_ids[:i]) for i in range(1, len(full.token_ids) + 1)]
    k = next(i for i in range(3, len(pieces) - 1)
             if len(pieces[i]) - len(pieces[i - 1]) >= 2 and len(pieces[i + 1]) - len(pieces[i]) >= 2)
    stop = pieces[i][-2:] + pieces[i + 1][len(pieces[i]):len(pieces[i]) + 2] if (i := k) else ""
    start = full.text.find(stop)
    assert start >= 0

    engine = smollm2_engine
    engine.add_request("stop", prompt, SamplingParams(max_tokens=40, ignore_eos=True, stop=[stop]))
    deltas, final = [], None
    while engine.has_unfinished():
        for out in engine.step():
            deltas.append(out.text_delta)
            final = out if out.finished else final
    assert final.finish_reason == "stop"
    assert "".join(deltas) == full.text[:start]
    assert stop not in "".join(deltas)


def test_min_tokens_and_ignore_eos(smollm2_engine):
    prompt = chat(smollm2_engine, CHAT_PROMPTS[0])
    short = smollm2_engine.generate([prompt], SamplingParams(max_tokens=64))[0]
    assert short.finish_reason == "eos" and len(short.token_ids) < 12
    at_least = smollm2_engine.generate([prompt], SamplingParams(max_tokens=64, min_tokens=12))[0]
    assert len(at_least.token_ids) >= 12
    assert not set(at_least.token_ids[:12]) & set(smollm2_engine.eos_token_ids)
    forced = smollm2_engine.generate([prompt], SamplingParams(max_tokens=20, ignore_eos=True))[0]
    assert len(forced.token_ids) == 20 and forced.finish_reason == "length"
    assert forced.token_ids[:len(short.token_ids)] == short.token_ids


def test_detokenize_false_gives_the_same_tokens_and_no_text(smollm2_engine):
    prompt = smollm2_engine.apply_chat_template([{"role": "user", "content": CHAT_PROMPTS[0]}])
    with_text, ids_only = (smollm2_engine.generate([prompt], SamplingParams(max_tokens=12, ignore_eos=True, detokenize=flag))[0]
                           for flag in (True, False))
    assert ids_only.token_ids == with_text.token_ids and len(ids_only.token_ids) == 12
    assert with_text.text and ids_only.text == ""


def test_stop_token_ids_end_with_reason_stop(smollm2_engine):
    prompt = chat(smollm2_engine, CHAT_PROMPTS[3])
    full = smollm2_engine.generate([prompt], SamplingParams(max_tokens=20, ignore_eos=True))[0]
    out = smollm2_engine.generate([prompt], SamplingParams(max_tokens=20, stop_token_ids=[full.token_ids[5]]))[0]
    first = full.token_ids.index(full.token_ids[5])
    assert out.finish_reason == "stop" and out.token_ids == full.token_ids[:first + 1]


def test_logprobs_of_greedy_tokens_are_the_top_ones(smollm2_engine):
    prompt = chat(smollm2_engine, CHAT_PROMPTS[5])
    out = smollm2_engine.generate([prompt], SamplingParams(max_tokens=6, logprobs=True, top_logprobs=3))[0]
    assert len(out.logprobs) == len(out.token_ids)
    for tok, lp in zip(out.token_ids, out.logprobs):
        assert lp.token_id == tok and lp.logprob <= 0 and len(lp.top) == 3
        assert lp.top[0] == (tok, pytest.approx(lp.logprob, abs=1e-5))


def test_abort_frees_blocks_and_reports_abort(smollm2_engine):
    engine = smollm2_engine
    engine.add_request("a", chat(engine, CHAT_PROMPTS[1]), SamplingParams(max_tokens=50, ignore_eos=True))
    engine.add_request("b", chat(engine, CHAT_PROMPTS[2]), SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    engine.step()
    stats = engine.stats()
    assert stats.running == 2 and stats.kv_blocks_used > 0
    assert engine.abort("a") and not engine.abort("missing")
    outs = {o.request_id: o for o in engine.step()}
    assert outs["a"].finished and outs["a"].finish_reason == "abort" and outs["a"].new_token_ids == []
    assert engine.stats().running == 1
    engine.abort("b")
    engine.step()
    assert not engine.has_unfinished() and engine.stats().kv_blocks_used == 0


def test_invalid_requests_raise_with_the_field_named(smollm2_engine):
    engine = smollm2_engine
    cases = [
        (lambda: engine.add_request("x", "", SamplingParams()), "prompt"),
        (lambda: engine.add_request("x", [], SamplingParams()), "prompt"),
        (lambda: engine.add_request("x", [1] * 512, SamplingParams()), "prompt"),  # max_seq_len is 512
        (lambda: engine.add_request("x", [10**9], SamplingParams()), "prompt"),
        (lambda: engine.add_request("x", "hi", SamplingParams(stop_token_ids=[10**9])), "stop_token_ids"),
        (lambda: SamplingParams(temperature=-1.0), "temperature"),
        (lambda: SamplingParams(top_p=0.0), "top_p"),
        (lambda: SamplingParams(top_p=1.01), "top_p"),
        (lambda: SamplingParams(max_tokens=0), "max_tokens"),
        (lambda: EngineConfig(model="/no/such/model"), None),
    ]
    for make, field in cases:
        if field is None:
            with pytest.raises(ModelNotFoundError, match="model"):
                Engine(make())
            continue
        with pytest.raises(InvalidParameterError) as e:
            make()
        assert e.value.field == field and field in str(e.value)
    assert not engine.has_unfinished()  # nothing half-added


def test_request_needing_more_kv_than_the_pool_is_refused_up_front(make_engine):
    engine = make_engine(block_size=4, num_kv_blocks=8)  # 32 token slots
    with pytest.raises(InvalidParameterError) as e:
        engine.add_request("big", [5] * 20, SamplingParams(max_tokens=20))
    assert e.value.field == "max_tokens" and "KV blocks" in str(e.value)
    with pytest.raises(InvalidParameterError) as e:
        engine.add_request("huge", [5] * 40, SamplingParams(max_tokens=1))
    assert e.value.field == "prompt"


def test_kv_pool_sized_from_a_memory_budget(make_engine):
    engine = make_engine(kv_cache_free_mem_fraction=1e-6, max_batch_size=1)
    cfg = engine.model_config
    block_bytes = cfg.num_layers * 2 * 16 * cfg.num_kv_heads * cfg.head_dim * 4
    import psutil

    expected = int(psutil.virtual_memory().available * 1e-6) // block_bytes
    assert abs(engine.stats().kv_blocks_total - max(1, expected)) <= 1
    capped = make_engine(kv_cache_free_mem_fraction=0.5, max_batch_size=2, max_seq_len=64)
    assert capped.stats().kv_blocks_total == 2 * 4  # never more than max_batch_size full sequences
