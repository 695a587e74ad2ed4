"""AWQ (builder/quantize/awq.py): folding scales keeps the float layer's function (MHA: o_proj through the
v rows; GQA: o_proj left alone), fake quantization matches the stored int4 format, the clip search never
loses to no clipping, and a tiny Llama with activation outliers quantized by the builder's driver lands
clearly closer to the float model than int4_wo (round to nearest) does."""
from __future__ import annotations

import copy

import pytest
import torch

from builder.quantize import quantize_model
from builder.quantize.awq import (CLIP_RATIOS, apply_scales, clamp_groups, fake_quantize, first_sequences,
                                  group_range, scaled_linears, search_clip)
from builder.quantize.layerwise import LINEARS, make_batch, run_layer, submodule
from engine.layers.quantization import QuantizationConfig, int4
from engine.layers.quantization.int4 import Int4WeightOnlyLinear
from engine.models.config import ModelConfig
from engine.models.llama import LlamaForCausalLM

GROUP = 32
OUTLIERS = 4  # input channels per norm scaled up: the few huge activation channels real LLMs have
OUTLIER_SCALE = 30.0
QK_SCALE = 0.2  # q and k rows scaled down: outlier inputs would otherwise make attention near one-hot,
# and the logits' error would measure argmax flips rather than the weights' error


def tiny_llama(num_kv_heads: int, hidden: int = 128, intermediate: int = 256, bias: bool = False,
               seed: int = 0) -> LlamaForCausalLM:
    """A random 2-layer Llama whose norm outputs have a few outlier channels."""
    cfg = ModelConfig(architecture="llama", vocab_size=96, hidden_size=hidden, intermediate_size=intermediate,
                      num_layers=2, num_heads=4, num_kv_heads=num_kv_heads, head_dim=hidden // 4,
                      rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None, max_position_embeddings=64,
                      tie_word_embeddings=False, qkv_bias=bias, o_proj_bias=bias, mlp_bias=bias)
    gen = torch.Generator().manual_seed(seed)
    model = LlamaForCausalLM(cfg, max_positions=64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif name == "embed_tokens.weight":
                p.copy_(torch.randn(p.shape, generator=gen))
            elif p.dim() == 2:  # linear weights [out, in]: unit-scale outputs
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
            else:  # biases
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for layer in model.layers:
            for norm in (layer.attn_norm, layer.mlp_norm):
                norm.weight[torch.randperm(hidden, generator=gen)[:OUTLIERS]] *= OUTLIER_SCALE
            attn = layer.attn
            attn.qkv_proj.weight[:attn.q_size + attn.kv_size] *= QK_SCALE
    return model.eval()


@torch.no_grad()
def logits(model: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    """ids [N, L] -> float32 logits [N*L, vocab], all sequences prefilled at once."""
    batch = make_batch(model, *ids.shape)
    hidden = model(ids.flatten(), batch.positions, [batch.kv_cache] * len(model.layers), batch.meta)
    return model.compute_logits(hidden)


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return ((approx - exact).pow(2).mean() / exact.pow(2).mean()).item()


# -- folding ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_kv_heads,bias", [(4, True), (2, False)], ids=["mha_bias", "gqa"])
def test_applying_scales_alone_keeps_the_layer_output(num_kv_heads, bias):
    model = tiny_llama(num_kv_heads, bias=bias)
    layer = model.layers[0]
    batch = make_batch(model, 2, 16)
    x = torch.randn(32, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = run_layer(layer, x, batch)
    params = {name: p.clone() for name, p in layer.named_parameters()}
    gen = torch.Generator().manual_seed(2)
    for name in scaled_linears(layer):
        s = torch.exp(torch.randn(submodule(layer, name).in_features, generator=gen))  # mostly 0.1x .. 10x
        apply_scales(layer, name, s)
    changed = {name for name, p in layer.named_parameters() if not torch.equal(p, params[name])}
    expected = {"attn.qkv_proj.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight",  # columns
                "attn_norm.weight", "mlp_norm.weight"}  # and what 1/s is folded into (+ up rows: gate_up's weight)
    if num_kv_heads == 4:  # o_proj's columns, and v rows: qkv's weight, already in
        expected.add("attn.o_proj.weight")
    if bias:  # the v / up rows' biases scale with their rows
        expected |= {"attn.qkv_proj.bias", "mlp.gate_up_proj.bias"} if num_kv_heads == 4 else {"mlp.gate_up_proj.bias"}
    assert changed == expected
    with torch.no_grad():
        after = run_layer(layer, x, batch)
    # float32 rounding of the rescaled products, relative to the outputs' size (outliers make them large)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5 * before.abs().max().item())


def test_o_proj_is_scaled_through_v_rows_only_without_gqa():
    assert scaled_linears(tiny_llama(4).layers[0]) == list(LINEARS)
    gqa = tiny_llama(2).layers[0]
    assert scaled_linears(gqa) == ["attn.qkv_proj", "mlp.gate_up_proj", "mlp.down_proj"]
    with pytest.raises(ValueError):
        apply_scales(gqa, "attn.o_proj", torch.ones(128))


def test_search_runs_on_the_first_whole_sequences():
    model = tiny_llama(2)
    batch = make_batch(model, 4, 32)
    x = torch.randn(128, 128, generator=torch.Generator().manual_seed(7))
    sub_x, sub = first_sequences(x, batch, 64 + 20)  # room for 2 whole sequences of 32
    assert sub.num_seqs == 2 and sub_x.shape == (64, 128)
    with torch.no_grad():
        torch.testing.assert_close(run_layer(model.layers[0], sub_x, sub), run_layer(model.layers[0], x, batch)[:64])
    assert first_sequences(x, batch, 8)[1].num_seqs == 1  # never less than one sequence


# -- the int4 grid and clipping --------------------------------------------------------------------

def test_fake_quantize_is_the_stored_format_with_a_short_last_group():
    weight = torch.randn(16, 576, generator=torch.Generator().manual_seed(3))  # 576 = 4.5 x 128
    config = QuantizationConfig(scheme="awq", group_size=128)
    expected = int4.dequantize(int4.quantize(weight, config), config, 576)
    torch.testing.assert_close(fake_quantize(weight, 128), expected, rtol=0, atol=1e-6)


def test_clip_search_never_loses_to_no_clipping():
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(300, 96, generator=gen)  # 300 rows: a short last output chunk; 96 = 1.5 groups of 64
    weight[:, 5] *= 8  # a few large weights that stretch their group's range
    x = torch.randn(512, 96, generator=gen)
    lo, hi = search_clip(weight, x, 64)
    w_min, w_max = group_range(weight, 64)
    ratios = torch.where(w_max > 0, hi / w_max, lo / w_min)
    assert all(any(abs(r - c) < 1e-6 for c in CLIP_RATIOS) for r in ratios.flatten().tolist())
    assert (ratios < 1).any()  # some group does better clipped
    clipped = fake_quantize(clamp_groups(weight, lo, hi, 64), 64)
    plain = fake_quantize(weight, 64)
    err = (x @ (clipped - weight).T).pow(2).mean()
    assert err <= (x @ (plain - weight).T).pow(2).mean()


# -- the whole model -------------------------------------------------------------------------------

@pytest.mark.parametrize("num_kv_heads", [4, 2], ids=["mha", "gqa"])
def test_awq_model_is_clearly_closer_to_float_than_round_to_nearest(num_kv_heads):
    model = tiny_llama(num_kv_heads)
    calibration = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(5))
    held_out = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(6))
    exact = logits(model, held_out)
    errors = {}
    for scheme in ("awq", "int4_wo"):
        quantized = copy.deepcopy(model)
        quantize_model(quantized, QuantizationConfig(scheme=scheme, group_size=GROUP), calibration)
        for layer in quantized.layers:
            assert all(isinstance(submodule(layer, name), Int4WeightOnlyLinear) for name in LINEARS)
        errors[scheme] = relative_error(logits(quantized, held_out), exact)
    print(f"{num_kv_heads=} relative logit MSE: awq {errors['awq']:.3e}, int4_wo {errors['int4_wo']:.3e}")
    assert errors["awq"] < 0.6 * errors["int4_wo"], errors  # measured ratio ~0.35
