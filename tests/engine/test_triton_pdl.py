"""Programmatic dependent launch (engine/layers/triton/pdl.py): launched only where the GPU has it, and a
chain of the decode step's kernels under a CUDA graph gives the same bits with it as without it."""
import pytest
import torch

from tests.engine.triton_env import DEVICE  # first: it sets up Triton's interpreter without CUDA

from engine.layers.quantization.triton.w4a16_gemv import w4a16_gemv  # noqa: E402
from engine.layers.quantization.triton.w8a16_gemv import w8a16_gemv  # noqa: E402
from engine.layers.triton.activation import silu_and_mul  # noqa: E402
from engine.layers.triton.gemv import gemv  # noqa: E402
from engine.layers.triton.pdl import pdl_launch, set_programmatic_launch  # noqa: E402
from engine.layers.triton.rms_norm import fused_add_rms_norm  # noqa: E402


@pytest.fixture
def pdl_switch():
    yield set_programmatic_launch
    set_programmatic_launch(True)


def test_plain_launch_without_a_hopper_gpu(pdl_switch):
    # The CPU (Triton's interpreter here) never gets the launch flag, which only a CUDA launch takes.
    assert pdl_launch(torch.device("cpu")) == {"USE_PDL": False}
    pdl_switch(False)
    assert pdl_launch(torch.device(DEVICE)) == {"USE_PDL": False}


@pytest.mark.gpu
def test_pdl_on_a_hopper_gpu():
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs compute capability 9.0 or later")
    assert pdl_launch(torch.device("cuda")) == {"USE_PDL": True, "launch_pdl": True}


def decode_chain(x, residual, norm_w, w_up, q8, s8, q4, s4, z4):
    """norm -> dense GEMV -> SiLU-mul -> int8 GEMV -> norm -> int4 GEMV: each kernel reads the one before."""
    h, residual = fused_add_rms_norm(x, residual, norm_w, 1e-6)
    a = silu_and_mul(gemv(h, w_up))
    h, residual = fused_add_rms_norm(w8a16_gemv(a, q8, s8), residual, norm_w, 1e-6)
    return w4a16_gemv(h, q4, s4, z4, 128), residual


@pytest.mark.gpu
def test_pdl_chain_in_a_cuda_graph_matches_plain_launches(pdl_switch):
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden, inter = 1024, 2816

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(torch.bfloat16)

    x, residual, norm_w = randn(1, hidden), randn(1, hidden), randn(hidden)
    w_up = randn(2 * inter, hidden, scale=0.03)
    q8 = torch.randint(-127, 128, (hidden, inter), generator=g, device="cuda", dtype=torch.int8)
    s8 = torch.rand(hidden, generator=g, device="cuda").to(torch.bfloat16) * 1e-3
    q4 = torch.randint(0, 256, (4096, hidden // 2), generator=g, device="cuda", dtype=torch.uint8)
    s4 = torch.rand(4096, hidden // 128, generator=g, device="cuda").to(torch.bfloat16) * 1e-2
    z4 = torch.randint(0, 16, (4096, hidden // 128), generator=g, device="cuda", dtype=torch.uint8)
    weights = (norm_w, w_up, q8, s8, q4, s4, z4)

    pdl_switch(False)
    want, want_res = decode_chain(x, residual.clone(), *weights)

    pdl_switch(True)
    res = residual.clone()
    decode_chain(x, res.clone(), *weights)  # compile and tune outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got, got_res = decode_chain(x, res, *weights)
    for _ in range(3):  # each replay starts from the same residual
        res.copy_(residual)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(got, want) and torch.equal(got_res, want_res)
