"""The dense decode GEMV (engine/layers/triton/gemv.py) against a float64 matmul. Without CUDA it runs
in Triton's interpreter (float16 there; bfloat16 on CUDA only)."""
import pytest
import torch

from tests.engine.triton_env import DEVICE  # first: it sets up Triton's interpreter without CUDA

from engine.layers.triton.activation import silu_and_mul  # noqa: E402
from engine.layers.triton.gemv import gemv  # noqa: E402

DENSE_DTYPES = [pytest.param(torch.float16, id="float16"),
                pytest.param(torch.bfloat16, id="bfloat16", marks=pytest.mark.gpu)]


def operands(m: int, k: int, n: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(m * 131 + k * 7 + n)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = (torch.randn(n, k, generator=g) * 0.05).to(dtype)
    return x.to(DEVICE), w.to(DEVICE), x.double() @ w.double().T


def assert_close(y: torch.Tensor, ref: torch.Tensor) -> None:
    assert y.shape == ref.shape
    err = (y.double().cpu() - ref).abs().max().item()
    assert err <= 1e-2 * ref.abs().max().item(), f"max error {err} vs max |ref| {ref.abs().max()}"


# Every M the GEMV takes, ragged N and K edges, K split over 1, 2, 3 and 5 programs (5 leaves the last
# split nothing but masked columns); the last program of a row tile sums the partials.
@pytest.mark.parametrize("dtype", DENSE_DTYPES)
@pytest.mark.parametrize("m,k,n,split", [(1, 200, 20, 1), (2, 200, 20, 3), (3, 64, 17, 2), (4, 128, 9, 5),
                                         (1, 576, 24, 2)])
def test_gemv_matches_reference(m, k, n, split, dtype):
    x, w, ref = operands(m, k, n, dtype)
    y = gemv(x, w, blocks={"BLOCK_N": 8, "BLOCK_K": 32, "SPLIT_K": split})
    assert y.dtype == dtype
    assert_close(y, ref)
    # The arrival counters were reset: a second launch sums the same partials in the same order.
    assert torch.equal(y, gemv(x, w, blocks={"BLOCK_N": 8, "BLOCK_K": 32, "SPLIT_K": split}))


def test_gemv_takes_strided_rows():
    x, w, ref = operands(2, 64, 16, torch.float16)
    wide = torch.zeros(16, 80, dtype=torch.float16, device=DEVICE)
    wide[:, 8:72] = w
    assert_close(gemv(x.T.contiguous().T, wide[:, 8:72]), ref)


def test_gemv_rejects_bad_inputs():
    x, w, _ = operands(5, 64, 16, torch.float16)
    with pytest.raises(ValueError, match=r"^x: the GEMV takes 1..4 rows, got M=5"):
        gemv(x, w)
    with pytest.raises(ValueError, match=r"^weight: has K=32 input columns, but x has K=64"):
        gemv(x[:1], w[:, :32].contiguous())
    with pytest.raises(ValueError, match=r"^weight: dtype must be torch.float16"):
        gemv(x[:1], w.float())
    with pytest.raises(ValueError, match=r"^x: dtype must be"):
        gemv(x[:1].float(), w.float())
    with pytest.raises(ValueError, match=r"^blocks: SPLIT_K must be 1..16"):
        gemv(x[:1], w, blocks={"BLOCK_N": 8, "BLOCK_K": 32, "SPLIT_K": 0.5})


def test_linear_takes_the_gemv_only_for_decode_rows_on_cuda():
    from engine.layers.triton.gemv import prefers_gemv

    w = torch.zeros(4096, 64, dtype=torch.bfloat16)
    assert not prefers_gemv(torch.zeros(1, 64, dtype=torch.bfloat16), w)  # CPU: torch's matmul
    if torch.cuda.is_available():
        w = w.cuda()
        assert prefers_gemv(torch.zeros(1, 64, dtype=torch.bfloat16, device="cuda"), w)
        assert prefers_gemv(torch.zeros(4, 64, dtype=torch.bfloat16, device="cuda"), w)
        assert not prefers_gemv(torch.zeros(5, 64, dtype=torch.bfloat16, device="cuda"), w)  # a prefill
        assert not prefers_gemv(torch.zeros(1, 64, device="cuda"), w.float())  # float32: cuBLAS, exact order


@pytest.mark.gpu
def test_unquantized_linear_decode_matches_cublas():
    from engine.layers.linear import UnquantizedLinear

    layer = UnquantizedLinear(11008, 4096, bias=True).cuda().to(torch.bfloat16)
    torch.nn.init.normal_(layer.weight, std=0.02)
    torch.nn.init.normal_(layer.bias, std=0.02)
    for m in (1, 4):
        x = torch.randn(m, 11008, device="cuda", dtype=torch.bfloat16)
        ref = x.double() @ layer.weight.double().T + layer.bias.double()
        assert_close(layer(x), ref.cpu())


# gated: silu(gate) * up as the GEMV's epilogue has the bits of the GEMV, then silu_and_mul; ragged
# outputs (9 of a tile of 4), every M, K split (the last program of a tile applies it after the sum).
@pytest.mark.parametrize("dtype", DENSE_DTYPES)
@pytest.mark.parametrize("m,k,n,split", [(1, 200, 18, 1), (3, 64, 18, 2), (4, 128, 40, 3)])
def test_gated_gemv_is_gemv_then_silu_and_mul(m, k, n, split, dtype):
    x, w, _ = operands(m, k, n, dtype)
    blocks = {"BLOCK_N": 8, "BLOCK_K": 32, "SPLIT_K": split}
    y = gemv(x, w, blocks=blocks, gated=True)
    assert y.shape == (m, n // 2)
    assert torch.equal(y, silu_and_mul(gemv(x, w, blocks=blocks)))


def test_gated_gemv_needs_gate_and_up_rows():
    x, w, _ = operands(1, 32, 9, torch.float16)
    with pytest.raises(ValueError, match="even"):
        gemv(x, w, gated=True)
