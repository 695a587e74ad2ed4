"""Every weight format: pack/unpack round trips, each quantized layer against its dequantized reference
on random inputs (CPU here; tests/engine/quantization/test_cuda_formats.py on a GPU), device checks."""
from __future__ import annotations

import pytest
import torch

from engine.errors import InvalidParameterError
from engine.layers.quantization import (QuantizationConfig, check_device, dequantize_weight, quantize_weight,
                                        quantized_linear)
from engine.layers.quantization import int4
from engine.layers.quantization.fp8 import calibrated_input_scale
from engine.model_runner import default_dtype

SCHEMES = ["int8_wo", "int4_wo", "smoothquant", "fp8"]


def make_layer(scheme: str, in_features: int, out_features: int, dtype: torch.dtype, bias: bool = True,
               seed: int = 0, device: str = "cpu", **options):
    config = QuantizationConfig(scheme=scheme, **options)
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=gen) / in_features ** 0.5
    tensors = quantize_weight(weight, config)
    with torch.device(device), default_dtype(dtype):
        layer = quantized_linear(in_features, out_features, bias, config)
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(layer, name).copy_(value)
        if bias:
            layer.bias.copy_(torch.randn(out_features, generator=gen))
    if hasattr(layer, "prepare"):
        layer.prepare()
    return layer, weight, tensors, config


@pytest.mark.parametrize("in_features", [64, 65, 576])
def test_int4_pack_unpack_round_trip(in_features):
    q = torch.randint(0, 16, (7, in_features), dtype=torch.uint8)
    packed = int4.pack(q)
    assert packed.dtype == torch.uint8 and packed.shape == (7, (in_features + 1) // 2)
    assert torch.equal(int4.unpack(packed, in_features), q)


def test_int4_kernel_order_pairs_adjacent_columns_in_each_word():
    q = torch.arange(16, dtype=torch.uint8).repeat(3, 1) % 16  # [3, 16]: two words per row, columns 0..15
    words = int4.to_kernel_order(int4.pack(q), 16).view(torch.int32)  # [3, 2]
    for p in range(4):  # nibble p holds the word's column 2p, nibble p + 4 column 2p + 1
        assert torch.equal((words >> (4 * p)) & 0xF, q[:, [2 * p, 8 + 2 * p]].to(torch.int32))
        assert torch.equal((words >> (16 + 4 * p)) & 0xF, q[:, [2 * p + 1, 9 + 2 * p]].to(torch.int32))


@pytest.mark.parametrize("in_features", [8, 576])
def test_int4_kernel_order_round_trips(in_features):
    packed = int4.pack(torch.randint(0, 16, (5, in_features), dtype=torch.uint8))
    reordered = int4.to_kernel_order(packed, in_features)
    assert not torch.equal(reordered, packed)
    assert torch.equal(int4.from_kernel_order(reordered, in_features), packed)
    in_place = packed.clone()
    int4.to_kernel_order(in_place, in_features, out=in_place)  # as a CUDA layer's prepare() does
    assert torch.equal(in_place, reordered)


def test_int4_kernel_order_needs_whole_words():
    assert int4.has_kernel_order(576) and not int4.has_kernel_order(100)
    with pytest.raises(ValueError, match="whole 8-column words, got 100"):
        int4.to_kernel_order(torch.zeros(2, 50, dtype=torch.uint8), 100)


@pytest.mark.parametrize("scheme,tolerance", [("int8_wo", 0.01), ("int4_wo", 0.12), ("smoothquant", 0.01),
                                              ("fp8", 0.07)])
def test_quantize_then_dequantize_is_close_to_the_weight(scheme, tolerance):
    # 576 = 4.5 groups of 128: int4's short last group included
    config = QuantizationConfig(scheme=scheme)
    weight = torch.randn(96, 576) / 24
    restored = dequantize_weight(quantize_weight(weight, config), config, 576)
    assert restored.shape == weight.shape
    assert (restored - weight).norm() / weight.norm() < tolerance


def test_int4_values_scales_and_zero_points_are_in_range():
    config = QuantizationConfig(scheme="int4_wo", group_size=32)
    t = quantize_weight(torch.randn(16, 100), config)
    q = int4.unpack(t["qweight"], 100)
    assert q.max() <= 15 and t["zeros"].max() <= 15
    assert t["scales"].shape == t["zeros"].shape == (16, 4)  # ceil(100 / 32) groups
    assert (t["scales"] > 0).all()


def test_int4_keeps_zero_exact_and_a_short_group_its_own_range():
    weight = torch.zeros(2, 160)
    weight[:, 128:] = torch.linspace(-1, 1, 32)  # the short last group (g128): its own scale
    weight[:, :4] = 100.0  # a loud first group must not widen the last one
    config = QuantizationConfig(scheme="int4_wo")
    restored = dequantize_weight(quantize_weight(weight, config), config, 160)
    assert torch.equal(restored[:, 4:128], torch.zeros(2, 124))
    assert (restored[:, 128:] - weight[:, 128:]).abs().max() <= 2 / 15 / 2 + 1e-6


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 5, 33])
def test_layer_forward_equals_its_dequantized_reference(scheme, dtype, tokens):
    layer, _, _, _ = make_layer(scheme, 576, 96, dtype, group_size=64)
    x = torch.randn(tokens, 576, generator=torch.Generator().manual_seed(1)).to(dtype)
    got, want = layer(x), layer.reference(x)
    assert got.dtype == dtype and got.shape == (tokens, 96)
    atol = 1e-4 if dtype == torch.float32 else 0.03 * want.abs().max().item()
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=0.02)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_layer_approximates_the_float_layer(scheme):
    layer, weight, _, _ = make_layer(scheme, 256, 64, torch.float32, bias=False, group_size=32)
    x = torch.randn(16, 256)
    exact = x @ weight.T
    assert (layer(x) - exact).norm() / exact.norm() < 0.1


def test_fp8_is_refused_off_cuda_with_the_reason():
    with pytest.raises(InvalidParameterError) as info:
        check_device(QuantizationConfig(scheme="fp8"), torch.device("cpu"))
    assert info.value.field == "quantization" and "compute capability >= 8.9" in info.value.problem


@pytest.mark.parametrize("field,value,says", [("scheme", "int3", "unknown scheme"), ("group_size", 48, "multiple of 32"),
                                              ("alpha", 1.5, "[0, 1]"), ("fp8_granularity", "row", "tensor"),
                                              ("fp8_activations", "row", "'token', 'tensor'")])
def test_bad_configs_name_the_field(field, value, says):
    options = {"scheme": "int4_wo", field: value}
    with pytest.raises(InvalidParameterError) as info:
        QuantizationConfig(**options)
    assert says in str(info.value)


def test_static_fp8_activations_need_per_tensor_weights_and_calibration():
    with pytest.raises(InvalidParameterError) as info:
        QuantizationConfig(scheme="fp8", fp8_activations="tensor")
    assert info.value.field == "fp8_activations" and "needs fp8_granularity 'tensor'" in info.value.problem
    static = QuantizationConfig(scheme="fp8", fp8_granularity="tensor", fp8_activations="tensor")
    assert static.static_fp8_inputs and static.calibrated
    assert not QuantizationConfig(scheme="fp8", fp8_granularity="tensor").calibrated
    assert QuantizationConfig(scheme="awq").calibrated and not QuantizationConfig(scheme="int8_wo").calibrated


def test_fp8_layer_with_a_static_input_scale_saturates_past_its_calibrated_range():
    layer, weight, _, _ = make_layer("fp8", 256, 64, torch.float32, bias=False, fp8_granularity="tensor",
                                     fp8_activations="tensor")
    x = torch.randn(16, 256)
    with torch.no_grad():
        layer.input_scale.copy_(calibrated_input_scale(x))
    exact = x @ weight.T
    assert (layer(x) - exact).norm() / exact.norm() < 0.1  # within the calibrated range: the float layer's
    amax = x.abs().max()
    loud = 4 * x
    # Beyond it the codes saturate at 448 x the scale (not inf, not wrapped): as if clipped to the range.
    assert torch.equal(layer(loud), layer(loud.clamp(-amax, amax)))
    assert not torch.equal(layer(loud), 4 * layer(x))


def test_config_round_trips_through_its_dict():
    config = QuantizationConfig(scheme="gptq", group_size=64, act_order=True, calibration="abc")
    assert QuantizationConfig.from_dict({**config.to_dict(), "quant_method": "inferline"}) == config
