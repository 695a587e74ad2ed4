"""Our Llama-family decoder against Hugging Face transformers, on tiny random checkpoints made here.

Every model is saved with save_pretrained (safetensors, the config.json transformers 5 writes) and
read back through our loader; our logits must equal HF's at every compared position, whether the
prompt is prefilled whole, in chunks or token by token, and whatever else shares the batch.
"""
from __future__ import annotations

import copy
import json
import shutil
import zlib
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

from engine import (Engine, EngineConfig, InvalidParameterError, ModelNotFoundError, SamplingParams,
                    UnsupportedModelError)
from engine.loader import open_checkpoint

pytestmark = pytest.mark.slow  # runs HF transformers

ATOL = 1e-4  # float32: ours and HF may differ only by summation order
PROMPT = [17, 201, 5, 98, 143, 66, 250, 12, 77, 180, 33]  # 11 tokens: not a multiple of block_size 4
OTHER_PROMPT = [9, 44, 130, 222, 61, 3, 115]
CONTINUATION = [88, 7, 199, 154, 40]  # fed as decode steps; crosses into a new KV block

DIMS = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, head_dim=16,
            max_position_embeddings=128, rms_norm_eps=1e-5, attn_implementation="eager")
LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                   high_freq_factor=4.0, original_max_position_embeddings=64)  # head_dim 16: low, medium and high bands


def _legacy_rope_keys(folder: Path) -> None:
    """Rewrite config.json as transformers 4 wrote it (and Llama-3.1 on the hub has it): rope_theta + rope_scaling."""
    cfg = json.loads((folder / "config.json").read_text())
    params = cfg.pop("rope_parameters")
    cfg["rope_theta"] = params.pop("rope_theta")
    cfg["rope_scaling"] = params
    (folder / "config.json").write_text(json.dumps(cfg))


# name -> (HF config class, HF model class, config kwargs, config.json rewrite)
SPECS: dict[str, tuple[type, type, dict, Callable[[Path], None] | None]] = {
    "llama_mha": (LlamaConfig, LlamaForCausalLM, dict(num_attention_heads=4, num_key_value_heads=4), None),
    "llama_mqa_tied": (LlamaConfig, LlamaForCausalLM,
                       dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True), None),
    "llama_gqa": (LlamaConfig, LlamaForCausalLM, dict(num_attention_heads=4, num_key_value_heads=2), None),
    "llama3_rope": (LlamaConfig, LlamaForCausalLM,
                    dict(num_attention_heads=4, num_key_value_heads=2, rope_parameters=LLAMA3_ROPE), None),
    "llama3_rope_legacy_config": (LlamaConfig, LlamaForCausalLM,
                                  dict(num_attention_heads=4, num_key_value_heads=2, rope_parameters=LLAMA3_ROPE),
                                  _legacy_rope_keys),
    # 8 heads x head_dim 16 != hidden 64 (as in Mistral-Nemo), and a non-default theta
    "mistral_gqa": (MistralConfig, MistralForCausalLM,
                    dict(num_attention_heads=8, num_key_value_heads=2,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6)), None),
    "qwen2_gqa_bias_tied": (Qwen2Config, Qwen2ForCausalLM,
                            dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True), None),
}
# HF Llama's attention_bias puts a bias on o_proj as well as on q/k/v; mlp_bias on gate/up/down.
LLAMA_BIAS_VARIANTS = {
    f"llama_{flag}": (LlamaConfig, LlamaForCausalLM, dict(num_attention_heads=4, num_key_value_heads=2, **{flag: True}),
                      None) for flag in ("attention_bias", "mlp_bias")}


def randomize_(model: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Every parameter random and non-zero (q/k/v biases included, so a dropped one is caught); norm
    weights around 1 but distinct, so a swapped or missing norm is caught too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * scale
            p.copy_(1 + noise if "norm" in name else noise)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(name, **save_pretrained_kwargs) -> (HF model in float32, checkpoint folder), built once."""
    cache: dict = {}

    def get(name: str, **save_kwargs) -> tuple[torch.nn.Module, Path]:
        key = (name, tuple(sorted(save_kwargs.items())))
        if key not in cache:
            config_cls, model_cls, kwargs, rewrite = (SPECS | LLAMA_BIAS_VARIANTS)[name]
            hf = model_cls(config_cls(**DIMS, **kwargs)).eval()
            randomize_(hf, zlib.crc32(name.encode()))
            folder = tmp_path_factory.mktemp(name)
            hf.save_pretrained(folder, **save_kwargs)
            if rewrite is not None:
                rewrite(folder)
            cache[key] = hf, folder
        return cache[key]

    return get


@torch.inference_mode()
def hf_logits(hf_model: torch.nn.Module, token_ids: list[int]) -> torch.Tensor:
    """HF logits [positions, vocab] in float32 for one unbatched sequence."""
    return hf_model(torch.tensor([token_ids])).logits[0].float()


def run_ours(decoder, prompt: list[int], chunks: tuple[int, ...], then: list[int]) -> torch.Tensor:
    """Prefill `prompt` in `chunks`, then decode `then` one token at a time: logits [1 + len(then), vocab]
    for positions len(prompt) - 1 onwards."""
    seq = decoder.sequence(prompt)
    return torch.stack([decoder.prefill(seq, chunks)] + [decoder.decode(seq, t) for t in then])


def assert_matches_hf(ours: torch.Tensor, ref: torch.Tensor, atol: float = ATOL) -> None:
    assert ours.shape == ref.shape
    diff = (ours - ref).abs().max().item()
    assert diff <= atol, f"max |ours - HF| = {diff:.3g} > {atol:.3g} (logits up to {ref.abs().max().item():.3g})"


# -- logits --------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt_len, chunks", [(11, (11,)), (11, (5, 6)), (11, (3, 4, 4)), (1, (1,))],
                         ids=["whole_prompt", "chunked_5_6", "chunked_3_4_4", "token_by_token"])
@pytest.mark.parametrize("name", list(SPECS))
def test_prefill_then_decode_matches_hf(name, prompt_len, chunks, tiny_model, paged_decoder):
    hf, folder = tiny_model(name)
    tokens = PROMPT + CONTINUATION
    ours = run_ours(paged_decoder(folder), tokens[:prompt_len], chunks, tokens[prompt_len:])
    assert_matches_hf(ours, hf_logits(hf, tokens)[prompt_len - 1:])


@pytest.mark.parametrize("name", list(SPECS))
def test_prefill_and_decode_in_one_batch_match_solo_hf(name, tiny_model, paged_decoder):
    hf, folder = tiny_model(name)
    dec = paged_decoder(folder)
    a, b = dec.sequence(OTHER_PROMPT), dec.sequence(PROMPT)
    got_a, got_b = [dec.step((a, len(OTHER_PROMPT)))[0]], []
    a.output_token_ids.append(CONTINUATION[0])
    rows = dec.step((a, 1), (b, 5))  # a decodes beside b's first prompt chunk, which samples nothing
    assert rows.shape[0] == 1
    got_a.append(rows[0])
    a.output_token_ids.append(CONTINUATION[1])
    rows = dec.step((b, 6), (a, 1))  # b's last prompt chunk beside a's decode
    got_b.append(rows[0])
    got_a.append(rows[1])
    for tok_a, tok_b in zip(CONTINUATION[2:], CONTINUATION):  # both decoding
        a.output_token_ids.append(tok_a)
        b.output_token_ids.append(tok_b)
        row_a, row_b = dec.step((a, 1), (b, 1))
        got_a.append(row_a)
        got_b.append(row_b)
    assert any(y != x + 1 for x, y in zip(a.block_table, a.block_table[1:])), "blocks should interleave"
    assert_matches_hf(torch.stack(got_a), hf_logits(hf, OTHER_PROMPT + CONTINUATION)[len(OTHER_PROMPT) - 1:])
    assert_matches_hf(torch.stack(got_b), hf_logits(hf, PROMPT + CONTINUATION[:3])[len(PROMPT) - 1:])


def test_unwritten_kv_slots_never_reach_attention(tiny_model, paged_decoder):
    """allocate_kv_cache uses torch.empty, so the pool starts as whatever memory held (NaN included).
    In a batch, the shorter sequence's keys are padded up to the longer context with slots it never
    wrote (the tail of its last block, block-table padding): they must not change its logits."""
    hf, folder = tiny_model("llama_gqa")
    dec = paged_decoder(folder, kv_fill=float("nan"))
    short, long = dec.sequence(OTHER_PROMPT), dec.sequence(PROMPT)
    rows = dec.step((short, len(OTHER_PROMPT)), (long, len(PROMPT)))
    assert_matches_hf(rows[0:1], hf_logits(hf, OTHER_PROMPT)[-1:])
    assert_matches_hf(rows[1:2], hf_logits(hf, PROMPT)[-1:])


@pytest.mark.parametrize("name", list(LLAMA_BIAS_VARIANTS))
def test_llama_with_o_proj_or_mlp_biases_matches_hf_or_is_refused(name, tiny_model, paged_decoder):
    """Such a checkpoint must load right or be refused with UnsupportedModelError, not crash (KeyError)."""
    hf, folder = tiny_model(name)
    try:
        dec = paged_decoder(folder)
    except UnsupportedModelError:
        return
    ours = run_ours(dec, PROMPT, (5, 6), CONTINUATION[:2])
    assert_matches_hf(ours, hf_logits(hf, PROMPT + CONTINUATION[:2])[len(PROMPT) - 1:])


def _write_baichuan_folder(llama_folder: Path, out: Path) -> None:
    """Baichuan2-7B's layout from a Llama MHA checkpoint: fused W_pack = cat(q, k, v) and an
    un-normalised lm_head (NormHead normalises its rows at inference)."""
    llama = json.loads((llama_folder / "config.json").read_text())
    keep = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size", "rms_norm_eps")
    config = {k: llama[k] for k in keep} | {
        "model_type": "baichuan", "architectures": ["BaichuanForCausalLM"], "model_max_length": 128,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    tensors = load_file(llama_folder / "model.safetensors")
    for i in range(llama["num_hidden_layers"]):
        prefix = f"model.layers.{i}.self_attn."
        tensors[prefix + "W_pack.weight"] = torch.cat([tensors.pop(f"{prefix}{p}_proj.weight") for p in "qkv"])
    out.mkdir()
    (out / "config.json").write_text(json.dumps(config))
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})


def test_baichuan2_w_pack_and_norm_head_match_hf_llama_with_normalised_head(tiny_model, paged_decoder, tmp_path):
    hf, llama_folder = tiny_model("llama_mha")
    _write_baichuan_folder(llama_folder, tmp_path / "baichuan")
    reference = copy.deepcopy(hf)
    with torch.no_grad():
        reference.lm_head.weight.copy_(F.normalize(hf.lm_head.weight, dim=-1))
    tokens = PROMPT + CONTINUATION
    ref = hf_logits(reference, tokens)[len(PROMPT) - 1:]
    assert (ref - hf_logits(hf, tokens)[len(PROMPT) - 1:]).abs().max() > 0.1, "NormHead must matter here"
    dec = paged_decoder(tmp_path / "baichuan")
    assert (dec.config.architecture, dec.config.norm_head, dec.config.num_kv_heads) == ("baichuan", True, 4)
    assert_matches_hf(run_ours(dec, PROMPT, (5, 6), CONTINUATION), ref)


def test_sharded_safetensors_load_the_same_model(tiny_model, paged_decoder):
    hf, folder = tiny_model("llama_gqa", max_shard_size="50KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (folder / "model.safetensors").exists()
    ours = run_ours(paged_decoder(folder), PROMPT, (5, 6), CONTINUATION)
    assert_matches_hf(ours, hf_logits(hf, PROMPT + CONTINUATION)[len(PROMPT) - 1:])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_half_precision_loads_in_that_dtype_and_matches_hf_in_it(dtype, tiny_model, paged_decoder):
    _, folder = tiny_model("llama_gqa")
    hf = LlamaForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager").eval()
    dec = paged_decoder(folder, dtype=dtype)
    assert {p.dtype for p in dec.model.parameters()} == {dtype}
    assert {c.dtype for c in dec.kv_caches} == {dtype}
    ref = hf_logits(hf, PROMPT + CONTINUATION)[len(PROMPT) - 1:]
    ours = run_ours(dec, PROMPT, (5, 6), CONTINUATION)
    assert_matches_hf(ours, ref, atol=5e-2 * ref.abs().max().item())


# -- end to end through the public API --------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama_mha", "llama_mqa_tied", "llama_gqa"])
def test_engine_generate_greedy_equals_hf_generate(name, tiny_model):
    hf, folder = tiny_model(name)
    engine = Engine(EngineConfig(model=str(folder), max_seq_len=64, num_kv_blocks=32, block_size=4))
    prompts = [PROMPT, OTHER_PROMPT]  # batched together in our engine, each alone in HF
    outputs = engine.generate(prompts, SamplingParams(max_tokens=8, ignore_eos=True))
    for prompt, out in zip(prompts, outputs):
        with torch.inference_mode():
            ref = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=8, eos_token_id=None,
                              pad_token_id=0)
        assert out.token_ids == ref[0, len(prompt):].tolist()
        assert out.finish_reason == "length"


# -- checkpoints we must refuse, with the error the worker maps to a status --------------------------

def _edit_config(**changes) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text()) | changes
        (folder / "config.json").write_text(json.dumps(cfg))
    return edit


def _delete(pattern: str) -> Callable[[Path], None]:
    def delete(folder: Path) -> None:
        for f in folder.glob(pattern):
            f.unlink()
    return delete


BROKEN = {  # case -> (save_pretrained kwargs, how to break the folder, error, words in the message)
    "unsupported_model_type": ({}, _edit_config(model_type="gpt2"), UnsupportedModelError, "gpt2"),
    "kv_heads_not_dividing_heads": ({}, _edit_config(num_key_value_heads=3), UnsupportedModelError,
                                    "num_key_value_heads"),
    "no_safetensors": ({}, _delete("*.safetensors"), ModelNotFoundError, "safetensors"),
    "missing_shard": ({"max_shard_size": "50KB"}, _delete("model-00002-of-*.safetensors"), ModelNotFoundError,
                      "model-00002-of-"),
    "no_config_json": ({}, _delete("config.json"), ModelNotFoundError, "config.json"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_checkpoint_raises_a_model_error(case, tiny_model, tmp_path):
    save_kwargs, breaks, error, words = BROKEN[case]
    _, folder = tiny_model("llama_gqa", **save_kwargs)
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    breaks(broken)
    with pytest.raises(error, match=words) as caught:
        Engine(EngineConfig(model=str(broken)))
    assert isinstance(caught.value, InvalidParameterError) and caught.value.field == "model"


def test_missing_path_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError) as caught:
        open_checkpoint(str(tmp_path / "no-such-model"))
    assert caught.value.field == "model"
