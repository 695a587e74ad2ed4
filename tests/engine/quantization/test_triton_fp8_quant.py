"""The one-kernel per-token FP8 quantization against fp8.quantize_per_token (the eager reference).

The scale may differ from the eager one in its last float32 bit (on CUDA torch divides by a scalar as
a multiplication by its reciprocal; the kernel divides), and that moves an x/scale lying on an e4m3
rounding tie to the neighbouring code: measured on an H200, 733 of 704,512 codes one step apart (bf16,
64 x 11008), none otherwise. So: scales within 2 ulp, codes within one e4m3 step (3 mantissa bits),
nearly all equal. Triton 3.6's interpreter (no CUDA) also casts to fp8 wrongly where rounding crosses a
power of two (31.8 becomes 16, not 32): there each code is checked to within that factor of two."""
import pytest
import torch

from tests.engine.triton_env import DEVICE, DTYPES  # first: it sets up Triton's interpreter without CUDA

from engine.layers.quantization.fp8 import quantize_per_token, quantize_static  # noqa: E402
from engine.layers.quantization.triton.fp8_quant import fp8_quantize_per_token, fp8_quantize_static  # noqa: E402


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(1, 64), (5, 100), (3, 2500), (2, 4096), (64, 11008)])  # K below, across and past one block
def test_matches_the_eager_reference(m, k, dtype):
    g = torch.Generator().manual_seed(m * 31 + k)
    x = (torch.randn(m, k, generator=g) * torch.logspace(-2, 2, m)[:, None]).to(dtype).to(DEVICE)
    x[0, 0] = 0.0
    xq, scales = fp8_quantize_per_token(x)
    ref_q, ref_scales = quantize_per_token(x)
    assert xq.dtype == torch.float8_e4m3fn and xq.shape == (m, k) and scales.shape == (m, 1)
    torch.testing.assert_close(scales, ref_scales, rtol=2.5e-7, atol=0)
    ours, ref = xq.float().cpu(), ref_q.float().cpu()
    assert (ours * ref >= 0).all()
    if DEVICE == "cuda":
        assert ((ours - ref).abs() <= ref.abs() / 8 + 2 ** -9).all()  # one e4m3 step (subnormals: 2^-9)
        assert (ours != ref).float().mean() < 0.01
    else:
        assert ((ours - ref).abs() <= ref.abs() / 2 + 2 ** -9).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(1, 64), (5, 100), (3, 2500)])
def test_a_static_scale_matches_the_eager_reference_and_saturates(m, k, dtype):
    g = torch.Generator().manual_seed(m * 17 + k)
    x = (torch.randn(m, k, generator=g) * 3).to(dtype).to(DEVICE)
    scale = (x.abs().amax().float() / 448 / 2).reshape(1)  # the loudest values lie past the range
    xq = fp8_quantize_static(x, scale)
    ref = quantize_static(x, scale)
    assert xq.dtype == torch.float8_e4m3fn and xq.shape == (m, k)
    ours, want = xq.float().cpu(), ref.float().cpu()
    beyond = (x.float() / scale).abs().cpu() >= 448
    assert beyond.any() and torch.equal(ours[beyond].abs(), torch.full((int(beyond.sum()),), 448.0))
    assert (ours * want >= 0).all()
    step = 8 if DEVICE == "cuda" else 2  # one e4m3 step on CUDA; the interpreter's fp8 cast (module doc)
    assert ((ours - want).abs() <= want.abs() / step + 2 ** -9).all()


def test_an_all_zero_row_gets_the_floor_scale_and_zeros():
    x = torch.zeros(2, 32, device=DEVICE)
    xq, scales = fp8_quantize_per_token(x)
    _, ref_scales = quantize_per_token(x)
    torch.testing.assert_close(scales, ref_scales, rtol=2.5e-7, atol=0)
    assert not xq.float().any()


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"^x: dtype"):
        fp8_quantize_per_token(torch.zeros(2, 8, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match=r"^x: must be 2-D"):
        fp8_quantize_per_token(torch.zeros(8, device=DEVICE))
    x = torch.zeros(2, 8, device=DEVICE)
    for bad in (torch.ones(2, device=DEVICE), torch.ones(1, dtype=torch.float16, device=DEVICE), 0.5):
        with pytest.raises(ValueError, match=r"^static_scale: must be a float32 tensor of one element"):
            fp8_quantize_static(x, bad)
