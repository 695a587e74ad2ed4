"""The CUDA path: same engine, same tokens. Runs only where a GPU is present (the `gpu` marker)."""
import pytest
import torch

from engine import Engine, EngineConfig, SamplingParams
from tests.conftest import CHAT_PROMPTS

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_cuda_float32_greedy_tokens_equal_the_cpu_engine(smollm2_dir):
    params = SamplingParams(max_tokens=32, ignore_eos=True)
    results = {}
    for device in ("cpu", "cuda"):
        engine = Engine(EngineConfig(model=str(smollm2_dir), device=device, dtype="float32", max_seq_len=256))
        prompts = [engine.apply_chat_template([{"role": "user", "content": p}]) for p in CHAT_PROMPTS]
        results[device] = [o.token_ids for o in engine.generate(prompts, params)]
    # TF32 would change float32 matmuls on the GPU; exactness needs it off (torch's default).
    assert not torch.backends.cuda.matmul.allow_tf32
    assert results["cuda"] == results["cpu"]


def test_cuda_bfloat16_logits_close_to_hf_bfloat16(smollm2_dir):
    from transformers import AutoModelForCausalLM

    engine = Engine(EngineConfig(model=str(smollm2_dir), device="cuda", dtype="bfloat16", max_seq_len=256))
    prompt = engine.apply_chat_template([{"role": "user", "content": CHAT_PROMPTS[2]}])
    out = engine.generate([prompt], SamplingParams(max_tokens=1, logprobs=True, top_logprobs=5))[0]
    hf = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.bfloat16).cuda().eval()
    with torch.inference_mode():
        ref = torch.log_softmax(hf(torch.tensor([prompt], device="cuda")).logits[0, -1].float(), -1)
    ours = out.logprobs[0]
    assert ours.token_id == int(ref.argmax())
    for token_id, logprob in ours.top:
        assert abs(logprob - float(ref[token_id])) < 0.1
