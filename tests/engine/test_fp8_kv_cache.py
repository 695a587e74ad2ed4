"""The fp8 (e4m3) KV cache as an engine option: the config, the pool it buys, a checkpoint's scales, and
its quality on the bundled SmolLM2-135M (float32 on CPU, torch_paged attention), measured here.
The attention math itself is tested in tests/engine/attention (test_*fp8*.py)."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import structlog
import torch

from engine import EngineConfig, InvalidParameterError, SamplingParams, kv_cache
from engine.kv_cache import bytes_per_block, num_blocks_for_budget
from engine.layers.attention import AttentionMetadata
from engine.layers.attention.kv_quant import KV_FP8, quantize_kv
from engine.loader import open_checkpoint
from engine.model_runner import load_model
from engine.models.config import ModelConfig
from tests.conftest import CHAT_PROMPTS

CPU = torch.device("cpu")
# Llama-2-7B's KV layout: 32 layers, 32 KV heads (MHA) of 128.
LLAMA_7B = ModelConfig(architecture="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                       num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128, rms_norm_eps=1e-5,
                       rope_theta=10000.0, rope_scaling=None, max_position_embeddings=4096,
                       tie_word_embeddings=False)


def test_config_rejects_an_unknown_kv_cache_dtype():
    for bad in ("fp16", "FP8", "float8_e4m3fn", ""):
        with pytest.raises(InvalidParameterError) as e:
            EngineConfig(model="m", kv_cache_dtype=bad)
        assert e.value.field == "kv_cache_dtype" and "kv_cache_dtype" in str(e.value) and "'fp8'" in str(e.value)
    assert EngineConfig(model="m").kv_cache_dtype == "auto"


def test_config_refuses_fp8_on_cuda_below_sm89(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(InvalidParameterError) as e:
        EngineConfig(model="m", device="cuda", kv_cache_dtype="fp8")
    assert e.value.field == "kv_cache_dtype" and ">= 8.9" in str(e.value) and "A100" in str(e.value)
    EngineConfig(model="m", device="cuda")  # the model's dtype is fine there
    for capability in ((8, 9), (9, 0), (10, 0)):  # Ada, Hopper, Blackwell
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        EngineConfig(model="m", device="cuda:0", kv_cache_dtype="fp8")


def test_fp8_halves_a_bfloat16_pool(monkeypatch):
    # The 512 KiB per token of a 7B MHA model in bfloat16 (the batch limit on long outputs) becomes 256 KiB.
    assert bytes_per_block(LLAMA_7B, 1, torch.bfloat16) == 512 * 1024
    assert bytes_per_block(LLAMA_7B, 16, KV_FP8) * 2 == bytes_per_block(LLAMA_7B, 16, torch.bfloat16)
    monkeypatch.setattr(kv_cache, "free_memory_bytes", lambda device: 40 * 2**30)
    blocks = {dtype: num_blocks_for_budget(LLAMA_7B, 16, dtype, CPU, 0.9, max_useful_blocks=10**6)
              for dtype in (torch.bfloat16, KV_FP8)}
    assert blocks[torch.bfloat16] == 36 * 1024 // 8 and blocks[KV_FP8] == 2 * blocks[torch.bfloat16]  # 8 MiB blocks


# -- on SmolLM2-135M -------------------------------------------------------------------------------------

def forward_logprobs(model: torch.nn.Module, ids: list[int], cache_dtype: torch.dtype) -> torch.Tensor:
    """Next-token log-probabilities at every position of `ids`, prefilled in one step on a fresh pool:
    every position's attention reads the keys and values back from the cache. [len(ids), vocab]"""
    n, block_size = len(ids), 16
    caches = kv_cache.allocate_kv_cache(model.cfg, -(-n // block_size), block_size, cache_dtype, CPU)
    meta = AttentionMetadata.prefill(torch.arange(-(-n // block_size), dtype=torch.int32)[None], n, block_size)
    with torch.inference_mode():
        hidden = model(torch.tensor(ids), torch.arange(n), caches, meta)
        return model.compute_logits(hidden).log_softmax(-1)


class FakeQuantized:
    """An attention backend wrapper that rounds K and V through e4m3 (the layer's scales) and stores them
    in a float32 cache: what an fp8 cache must compute, built from quantize_kv alone."""

    def __init__(self, layer_attn: torch.nn.Module):
        self.backend, self.layer = layer_attn.attn, layer_attn

    def __call__(self, q, k, v, cache, meta, k_scale, v_scale, rotary, positions):
        ks, vs = self.layer.k_scale, self.layer.v_scale
        q, k = rotary(positions, q, k)  # the cache holds rotated keys
        return self.backend(q, quantize_kv(k, ks).float() * ks, quantize_kv(v, vs).float() * vs, cache, meta)


FP32_BLOCKS = 10  # the memory budget the fp8 engine gets: ten float32 blocks


@pytest.fixture(scope="module")
def fp8_engine(make_engine, smollm2_dir):
    """A float32 SmolLM2 engine on an fp8 pool, with the start-up logs it wrote."""
    fp32_block = bytes_per_block(open_checkpoint(str(smollm2_dir)).config, 16, torch.float32)
    with pytest.MonkeyPatch.context() as mp, structlog.testing.capture_logs() as logs:
        mp.setattr(kv_cache, "free_memory_bytes", lambda device: FP32_BLOCKS * fp32_block)
        made = make_engine(max_batch_size=2, kv_cache_free_mem_fraction=1.0, kv_cache_dtype="fp8")
    return made, logs


@pytest.fixture(scope="module")
def chat_ids(fp8_engine) -> list[int]:
    """All eight chat prompts as one user turn: 94 tokens."""
    return fp8_engine[0].apply_chat_template([{"role": "user", "content": " ".join(CHAT_PROMPTS)}])


@pytest.mark.slow
def test_engine_on_an_fp8_pool_gets_four_times_the_float32_blocks_and_generates(fp8_engine):
    made, logs = fp8_engine
    assert made.stats().kv_blocks_total == 4 * FP32_BLOCKS  # a float32 model: a quarter of the bytes
    assert made.kv_cache_dtype == KV_FP8 and all(c.dtype == KV_FP8 for c in made.runner.kv_caches)
    warnings = [e for e in logs if e["event"] == "fp8_kv_cache_default_scales"]
    assert len(warnings) == 1 and warnings[0]["layers"] == 30  # SmolLM2's checkpoint has no scales
    assert [e["kv_cache_dtype"] for e in logs if e["event"] == "engine_ready"] == ["torch.float8_e4m3fn"]

    # Two prompts whose greedy continuations hold no near-tie: measured, the fp8 pool gives the float32
    # pool's tokens, 8 of 8 here (12 of 12 alone, 22 and 23 of 24 in a batch of eight). Greedy decoding on
    # a float32 cache must pick the first 6 of them: they are its argmax, fed back (teacher-forced).
    prompts = [made.apply_chat_template([{"role": "user", "content": CHAT_PROMPTS[i]}]) for i in (2, 6)]
    outputs = made.generate(prompts, SamplingParams(max_tokens=8, ignore_eos=True))
    for prompt, out in zip(prompts, outputs):
        assert len(out.token_ids) == 8 and out.text.strip()
        ref = forward_logprobs(made.runner.model, prompt + out.token_ids, torch.float32)
        assert ref[len(prompt) - 1:].argmax(-1)[:6].tolist() == out.token_ids[:6]
    assert made.stats().kv_blocks_used == 0


@pytest.mark.slow
def test_next_token_logprobs_stay_close_to_a_float32_cache(fp8_engine, chat_ids):
    """Teacher-forced, so one near-tie cannot derail the rest. Measured on 94 positions (scales 1.0):
    the top token agrees at 95.7% of them, its log-probability moves by 0.054 nats on average (0.56 at
    most) and the KL divergence from the float32-cache distribution averages 0.011 nats (0.19 at most).
    The bounds below leave about twice that; a broken cache (wrong scale, garbage read) is far off."""
    model = fp8_engine[0].runner.model
    ref, fp8 = forward_logprobs(model, chat_ids, torch.float32), forward_logprobs(model, chat_ids, KV_FP8)
    top = ref.argmax(-1)
    assert (fp8.argmax(-1) == top).float().mean() >= 0.9
    assert (ref.gather(1, top[:, None]) - fp8.gather(1, top[:, None])).abs().mean() <= 0.1
    assert (ref.exp() * (ref - fp8)).sum(-1).mean() <= 0.025
    # And exactly what rounding K and V through e4m3 gives: the loss is the format's, not the code's.
    backends = [layer.attn.attn for layer in model.layers]
    try:
        for layer in model.layers:
            layer.attn.attn = FakeQuantized(layer.attn)
        assert torch.equal(forward_logprobs(model, chat_ids, torch.float32), fp8)
    finally:
        for layer, backend in zip(model.layers, backends):
            layer.attn.attn = backend


@pytest.mark.slow
def test_checkpoint_scales_load_into_attention_and_are_used(smollm2_dir):
    """vLLM / llm-compressor name them model.layers.{i}.self_attn.k_scale / v_scale (shape [] or [1])."""
    ckpt = open_checkpoint(str(smollm2_dir))
    # About amax / 448 of SmolLM2's K (up to ~20) and V (up to ~12), as a calibration would give; none for layer 7.
    scales = [(f"model.layers.{i}.self_attn.{which}_scale", torch.tensor(value) if i % 2 else torch.tensor([value]))
              for i in range(30) if i != 7 for which, value in (("k", 0.05), ("v", 0.03))]
    with_scales = dataclasses.replace(ckpt, read_weights=lambda: itertools.chain(ckpt.read_weights(), scales))
    model = load_model(with_scales, torch.float32, CPU, 512, "torch_paged")
    attn = model.layers[0].attn
    assert type(attn.k_scale) is float and attn.k_scale == pytest.approx(0.05) and attn.v_scale == pytest.approx(0.03)
    assert attn.kv_scales_loaded and not model.layers[7].attn.kv_scales_loaded
    assert (model.layers[7].attn.k_scale, model.layers[7].attn.v_scale) == (1.0, 1.0)  # none given: 1.0

    # One layer (the whole model would turn rounding-order differences into flipped e4m3 roundings):
    # with an fp8 cache it computes what K and V rounded through e4m3 with its scales give.
    n = 40
    x = torch.randn(n, model.cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    meta = AttentionMetadata.prefill(torch.arange(-(-n // 16), dtype=torch.int32)[None], n, 16)

    def layer_out(cache_dtype: torch.dtype) -> torch.Tensor:
        cache = torch.zeros(2, -(-n // 16), 16, model.cfg.num_kv_heads, model.cfg.head_dim).to(cache_dtype)
        with torch.inference_mode():
            return attn(x, torch.arange(n), cache, meta)

    fp8 = layer_out(KV_FP8)
    backend, attn.attn = attn.attn, FakeQuantized(attn)
    # Only where the scales are applied differs, so only float32 rounding: measured 5e-6 of the largest |output|.
    largest = fp8.abs().max().item()
    assert (layer_out(torch.float32) - fp8).abs().max() <= 1e-4 * largest
    attn.attn, attn.k_scale, attn.v_scale = backend, 1.0, 1.0
    unscaled = (layer_out(KV_FP8) - fp8).abs().max().item()
    assert unscaled >= 1e-2 * largest  # other scales round other values

    for bad, problem in ((torch.ones(2), "one scale per layer"), (torch.tensor(0.0), "must be finite and > 0"),
                         (torch.tensor(float("inf")), "must be finite and > 0")):
        with pytest.raises(ValueError, match=f"^k_scale: {problem}"):
            attn.load_kv_scale("k", bad)
