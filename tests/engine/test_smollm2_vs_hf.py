"""The bundled SmolLM2-135M (GGUF), run by our engine and by HF transformers from the same file."""
import pytest
import torch

from engine import Engine, EngineConfig, SamplingParams
from engine.loader import bundled_model_path
from tests.conftest import CHAT_PROMPTS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM

    path = bundled_model_path("smollm2-135m")
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def test_greedy_tokens_equal_hf_for_8_chat_prompts_batched_in_flight(hf_model):
    engine = Engine(EngineConfig(model="smollm2-135m", max_seq_len=256, max_batch_size=8))
    prompts = [engine.apply_chat_template([{"role": "user", "content": p}]) for p in CHAT_PROMPTS]
    # Always 32 tokens: min_tokens masks EOS like HF's min_new_tokens (ignore_eos would sample it and go on).
    params = SamplingParams(max_tokens=32, min_tokens=32)
    ours = engine.generate(prompts, params)
    for prompt, out in zip(prompts, ours):
        with torch.inference_mode():
            ref = hf_model.generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False)
        assert out.token_ids == ref[0, len(prompt):].tolist()
        assert len(out.token_ids) == 32 and out.finish_reason == "length"
    assert engine.stats().kv_blocks_used == 0


def test_stops_at_eos_like_hf_and_reports_the_reason(hf_model):
    engine = Engine(EngineConfig(model="smollm2-135m", max_seq_len=256))
    prompt = engine.apply_chat_template([{"role": "user", "content": CHAT_PROMPTS[0]}])
    out = engine.generate([prompt], SamplingParams(max_tokens=64))[0]
    with torch.inference_mode():
        ref = hf_model.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False)[0, len(prompt):].tolist()
    assert out.token_ids == ref
    assert out.finish_reason == "eos" and out.token_ids[-1] in engine.eos_token_ids
    assert out.text == engine.tokenizer.decode(out.token_ids, skip_special_tokens=True)
