"""fp8 with static activation scales (fp8_activations "tensor") through the builder: each linear's input
scale calibrated from what it saw, and the scales surviving export (q/k/v and gate/up each carrying their
fused input's) and loading back. fp8 engines run on Hopper/Ada only, so the loaded model is built here
directly, past the device check, and compared on the builder's CPU scoring path."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from builder.quantize import quantize_model
from builder.quantize.layerwise import LINEARS, layer_inputs, make_batch
from engine.layers.quantization import QuantizationConfig
from engine.loader import open_checkpoint
from engine.loader.export import export_model
from engine.models.llama import LlamaForCausalLM
from tests.builder.quantize.test_gptq import hidden_states, tiny_llama

STATIC = QuantizationConfig(scheme="fp8", lm_head=True, fp8_granularity="tensor", fp8_activations="tensor")


@pytest.fixture(scope="module")
def calibration() -> torch.Tensor:
    return torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def quantized(calibration) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """(the float tiny Llama, its static-fp8 twin)"""
    model = tiny_llama()
    twin = copy.deepcopy(model)
    quantize_model(twin, STATIC, calibration)
    return model, twin


def test_each_input_scale_maps_the_largest_input_seen_to_448(quantized, calibration):
    model, twin = quantized
    batch = make_batch(model, *calibration.shape)
    x = model.embed_tokens(calibration.flatten())
    with torch.no_grad():
        seen = layer_inputs(model.layers[0], x, batch)  # the first layer's inputs: no quantized layer before
    for name in LINEARS:
        layer = twin.layers[0].get_submodule(name)
        assert layer.input_scale.item() == pytest.approx(seen[name].abs().max().item() / 448, rel=1e-6)
        assert torch.unique(layer.scales).numel() == 1  # one weight scale: the tensor-wise GEMM's
    assert twin.lm_head.input_scale.item() > 0


def test_static_scales_survive_export_and_load_back(quantized, tmp_path):
    _, twin = quantized
    export_model(twin, None, tmp_path, torch.float32, STATIC)
    stored = load_file(str(tmp_path / "model.safetensors"))
    qkv = twin.layers[1].attn.qkv_proj.input_scale
    for part in ("q_proj", "k_proj", "v_proj"):  # each part carries its fused input's scale
        assert torch.equal(stored[f"model.layers.1.self_attn.{part}.input_scale"], qkv)
    ckpt = open_checkpoint(str(tmp_path))
    assert ckpt.quantization == STATIC
    loaded = LlamaForCausalLM(ckpt.config, max_positions=64, quantization=ckpt.quantization)
    loaded.load_weights(ckpt.read_weights())
    want = {n: p for n, p in twin.named_parameters() if n.endswith("input_scale")}
    got = {n: p for n, p in loaded.named_parameters() if n.endswith("input_scale")}
    assert want.keys() == got.keys() and len(got) == 4 * 2 + 1
    assert all(torch.equal(got[n], want[n]) for n in want)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.compute_logits(hidden_states(loaded, ids)),
                                   twin.compute_logits(hidden_states(twin, ids)), atol=1e-5, rtol=1e-5)


def test_loading_takes_the_largest_of_the_parts_scales(quantized, tmp_path):
    _, twin = quantized
    export_model(twin, None, tmp_path, torch.float32, STATIC)
    ckpt = open_checkpoint(str(tmp_path))
    louder = {"model.layers.0.mlp.up_proj.input_scale": 3.0, "model.layers.0.self_attn.k_proj.input_scale": 5.0}
    loaded = LlamaForCausalLM(ckpt.config, max_positions=64, quantization=ckpt.quantization)
    loaded.load_weights((name, torch.tensor([louder[name]]) if name in louder else tensor)
                        for name, tensor in ckpt.read_weights())
    assert loaded.layers[0].mlp.gate_up_proj.input_scale.item() == 3.0
    assert loaded.layers[0].attn.qkv_proj.input_scale.item() == 5.0


def test_parts_with_different_weight_scales_are_refused(quantized, tmp_path):
    _, twin = quantized
    export_model(twin, None, tmp_path, torch.float32, STATIC)
    ckpt = open_checkpoint(str(tmp_path))
    loaded = LlamaForCausalLM(ckpt.config, max_positions=64, quantization=ckpt.quantization)
    loaded.load_weights((name, tensor * 2 if name == "model.layers.0.self_attn.v_proj.scales" else tensor)
                        for name, tensor in ckpt.read_weights())
    loaded.layers[1].attn.qkv_proj.prepare()  # untouched: fine
    with pytest.raises(ValueError, match="one weight scale per layer"):
        loaded.layers[0].attn.qkv_proj.prepare()


def test_the_static_model_stays_close_to_the_float_one(quantized):
    model, twin = quantized
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))
    reference, out = hidden_states(model, ids), hidden_states(twin, ids)
    assert (torch.linalg.norm(out - reference) / torch.linalg.norm(reference)).item() < 0.1
