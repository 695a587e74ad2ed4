"""The Triton RMSNorm, RoPE and SiLU-and-mul kernels against the torch layers they replace. Without CUDA
they run in Triton's interpreter on small shapes; bfloat16 runs on CUDA only (the interpreter's bfloat16
is unreliable). Half-precision results are compared in units in the last place (ulps)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.engine.triton_env import DEVICE, DTYPES  # first: it sets up Triton's interpreter without CUDA

from engine.layers.norm import RMSNorm  # noqa: E402
from engine.layers.rotary import RotaryEmbedding  # noqa: E402
from engine.layers.quantization.triton.fp8_quant import fp8_quantize_per_token, fp8_quantize_static  # noqa: E402
from engine.layers.triton.activation import silu_and_mul, silu_and_mul_fp8  # noqa: E402
from engine.layers.triton.rms_norm import (fused_add_rms_norm, fused_add_rms_norm_fp8, rms_norm,  # noqa: E402
                                           rms_norm_fp8)
from engine.layers.triton.rotary import apply_rope_  # noqa: E402

EPS = 1e-5


def ordered(x: torch.Tensor) -> torch.Tensor:
    """Float bits as integers that count ulps: adjacent floats differ by 1, -0 == +0."""
    bits = {torch.float32: 32, torch.float16: 16, torch.bfloat16: 16}[x.dtype]
    i = x.view({32: torch.int32, 16: torch.int16}[bits]).long()
    return torch.where(i < 0, -(i + (1 << (bits - 1))), i)


def assert_ulps(y: torch.Tensor, ref: torch.Tensor, ulps: int) -> None:
    """At most `ulps` apart, and equal almost everywhere: a missed rounding step (e.g. not rounding to
    the dtype before the weight multiply) moves about a quarter of the half-precision values."""
    assert y.dtype == ref.dtype and y.shape == ref.shape
    diff = (ordered(y.cpu()) - ordered(ref.cpu())).abs()
    assert diff.max().item() <= ulps, f"{diff.max().item()} ulps apart"
    assert (diff == 0).double().mean().item() >= 0.99, f"only {(diff == 0).double().mean():.3f} equal"


def assert_matches(y: torch.Tensor, ref: torch.Tensor, fp32_rtol: float) -> None:
    """float32 within a relative tolerance (the fp32 sum order and, on CUDA, exp2/rsqrt approximations
    differ from torch's by several ulps); half precision within one ulp, almost always equal."""
    if y.dtype == torch.float32:
        torch.testing.assert_close(y, ref, rtol=fp32_rtol, atol=fp32_rtol)
    else:
        assert_ulps(y, ref, 1)


def randn(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEVICE)


def hf_rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # On CPU: on CUDA the module itself dispatches to the kernel under test.
    norm = RMSNorm(x.shape[1], EPS).to(dtype=x.dtype)
    norm.weight.data.copy_(weight.cpu())
    with torch.no_grad():
        return norm(x.cpu()).to(x.device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 576, 1000])
def test_rms_norm_matches_hf(hidden, dtype):
    wide = randn(5, hidden + 24, dtype=dtype, seed=hidden)
    x = wide[:, 8:8 + hidden]  # strided rows
    weight = (1 + 0.1 * randn(hidden, dtype=torch.float32, seed=1)).to(dtype)
    assert_matches(rms_norm(x, weight, EPS), hf_rms_norm(x, weight), 2e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm_matches_add_then_hf(dtype):
    x = randn(7, 576, dtype=dtype, seed=2)
    residual = randn(7, 576, dtype=dtype, seed=3) * 4
    weight = (1 + 0.1 * randn(576, dtype=torch.float32, seed=4)).to(dtype)
    summed = x + residual
    out, new_residual = fused_add_rms_norm(x, residual, weight, EPS)
    assert new_residual is residual  # updated in place
    assert torch.equal(new_residual, summed)
    assert_matches(out, hf_rms_norm(summed, weight), 2e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_matches_rotary_embedding_on_fused_qkv(dtype):
    tokens, heads, kv_heads, head_dim = 6, 4, 2, 64
    rotary = RotaryEmbedding(head_dim, 4096, 10000.0, None)  # on CPU: on CUDA it runs the kernel under test
    qkv = randn(tokens, (heads + 2 * kv_heads) * head_dim, dtype=dtype, seed=5)
    q = qkv[:, :heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim:(heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    positions = torch.tensor([0, 1, 17, 255, 3000, 4095], device=DEVICE)
    before = qkv.clone()
    q_ref, k_ref = (t.to(DEVICE) for t in rotary(positions.cpu(), q.cpu(), k.cpu()))
    apply_rope_(q, k, positions, rotary.cos.to(DEVICE), rotary.sin.to(DEVICE))
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim:], before[:, (heads + kv_heads) * head_dim:])  # v
    if dtype == torch.float32:
        torch.testing.assert_close(q, q_ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(k, k_ref, rtol=1e-6, atol=1e-6)
        return
    # RotaryEmbedding rounds cos/sin and each product to the dtype; the kernel rounds once, so it is
    # within an ulp of the exact rotation and near (not equal to) the module.
    cos, sin = (table[positions.cpu()].double()[:, None] for table in (rotary.cos, rotary.sin))
    for y, x, ref in ((q, before[:, :heads * head_dim].view(q.shape), q_ref),
                      (k, before[:, heads * head_dim:(heads + kv_heads) * head_dim].view(k.shape), k_ref)):
        x = x.double().cpu()
        x1, x2 = x.chunk(2, dim=-1)
        exact = x * cos + torch.cat((-x2, x1), dim=-1) * sin
        assert_ulps(y, exact.to(dtype).to(DEVICE), 1)
        # The module's three roundings leave it up to a couple of ulps off (bf16: 1/64 near |x| = 4).
        tol = 1e-2 if dtype == torch.float16 else 4e-2
        torch.testing.assert_close(y, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", [64, 100])
def test_silu_and_mul_matches_torch(inter, dtype):
    wide = randn(5, 2 * inter + 8, dtype=dtype, seed=inter) * 3
    gate_up = wide[:, :2 * inter]  # strided rows
    ref = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]  # torch on either device
    assert_matches(silu_and_mul(gate_up), ref, 1e-5)


def assert_same_fp8(fused: tuple[torch.Tensor, torch.Tensor], unfused: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The fused kernel's codes and scales have the bits of the unfused kernels' (not only close)."""
    (q, scales), (ref_q, ref_scales) = fused, unfused
    assert q.dtype == torch.float8_e4m3fn and q.shape == ref_q.shape and scales.shape == ref_scales.shape
    assert torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8))
    assert torch.equal(scales, ref_scales)


def norm_inputs(hidden: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (rows from 0.01 to 100 in magnitude), residual [6, hidden] and a norm weight [hidden]."""
    x = randn(6, hidden, dtype=dtype, seed=hidden) * torch.logspace(-2, 2, 6, device=DEVICE)[:, None].to(dtype)
    return x, randn(6, hidden, dtype=dtype, seed=hidden + 1), randn(hidden, dtype=dtype, seed=hidden + 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 1000])
def test_rms_norm_fp8_has_the_bits_of_rms_norm_then_fp8_quantization(hidden, dtype):
    x, residual, w = norm_inputs(hidden, dtype)
    assert_same_fp8(rms_norm_fp8(x, w, EPS), fp8_quantize_per_token(rms_norm(x, w, EPS)))
    fused, fused_residual = fused_add_rms_norm_fp8(x, residual.clone(), w, EPS)
    out, summed = fused_add_rms_norm(x, residual.clone(), w, EPS)
    assert_same_fp8(fused, fp8_quantize_per_token(out))
    assert torch.equal(fused_residual, summed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", [64, 100, 300])  # one strip, a partial one, several (the interpreter's 64 wide)
def test_silu_and_mul_fp8_has_the_bits_of_silu_and_mul_then_fp8_quantization(inter, dtype):
    wide = randn(5, 2 * inter + 8, dtype=dtype, seed=inter) * 3
    gate_up = wide[:, :2 * inter]  # strided rows
    gate_up[0] = 0  # an all-zero row: the floor scale, zero codes
    assert_same_fp8(silu_and_mul_fp8(gate_up), fp8_quantize_per_token(silu_and_mul(gate_up)))


def half_the_range(x: torch.Tensor) -> torch.Tensor:
    """A static scale under which x's loudest values saturate."""
    return (x.abs().amax().float() / 448 / 2).reshape(1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 1000])
def test_rms_norm_fp8_with_a_static_scale_has_the_bits_of_rms_norm_then_static_quantization(hidden, dtype):
    x, residual, w = norm_inputs(hidden, dtype)
    out = rms_norm(x, w, EPS)
    scale = half_the_range(out)
    assert_same_fp8(rms_norm_fp8(x, w, EPS, scale), (fp8_quantize_static(out, scale), scale))
    fused, fused_residual = fused_add_rms_norm_fp8(x, residual.clone(), w, EPS, scale)
    out, summed = fused_add_rms_norm(x, residual.clone(), w, EPS)
    assert_same_fp8(fused, (fp8_quantize_static(out, scale), scale))
    assert fused[1] is scale and torch.equal(fused_residual, summed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", [64, 100, 300])
def test_silu_and_mul_fp8_with_a_static_scale_has_the_bits_of_silu_and_mul_then_static_quantization(inter, dtype):
    wide = randn(5, 2 * inter + 8, dtype=dtype, seed=inter) * 3
    gate_up = wide[:, :2 * inter]  # strided rows
    out = silu_and_mul(gate_up)
    scale = half_the_range(out)
    assert_same_fp8(silu_and_mul_fp8(gate_up, scale), (fp8_quantize_static(out, scale), scale))


def test_empty_inputs():
    x = randn(0, 64, dtype=torch.float32, seed=0)
    w = randn(64, dtype=torch.float32, seed=1)
    assert rms_norm(x, w, EPS).shape == (0, 64)
    assert silu_and_mul(x).shape == (0, 32)
    assert [t.shape for t in rms_norm_fp8(x, w, EPS)] == [(0, 64), (0, 1)]
    assert [t.shape for t in silu_and_mul_fp8(x)] == [(0, 32), (0, 1)]
    apply_rope_(x.view(0, 1, 64), x.view(0, 1, 64), torch.empty(0, dtype=torch.int64, device=DEVICE),
                torch.ones(4, 64, device=DEVICE), torch.ones(4, 64, device=DEVICE))


def test_rejects_bad_inputs():
    x = randn(3, 64, dtype=torch.float32, seed=0)
    w = randn(64, dtype=torch.float32, seed=1)
    with pytest.raises(ValueError, match=r"^x: .*dtype"):
        rms_norm(x.double(), w, EPS)
    with pytest.raises(ValueError, match=r"^weight: .*dtype"):
        rms_norm(x, w.half(), EPS)
    with pytest.raises(ValueError, match=r"^weight: .*shape"):
        rms_norm(x, w[:32], EPS)
    with pytest.raises(ValueError, match=r"^x: .*last dim"):
        rms_norm(x.T.contiguous().T, w, EPS)
    with pytest.raises(ValueError, match=r"^residual: .*shape"):
        fused_add_rms_norm(x, x[:2], w, EPS)
    with pytest.raises(ValueError, match=r"^gate_up: .*even"):
        silu_and_mul(x[:, :63])
    with pytest.raises(ValueError, match=r"^gate_up: .*even"):
        silu_and_mul_fp8(x[:, :63])
    with pytest.raises(ValueError, match=r"^residual: .*shape"):
        fused_add_rms_norm_fp8(x, x[:2], w, EPS)
    for bad in (torch.ones(3, device=DEVICE), torch.ones(1, dtype=torch.float64, device=DEVICE)):
        with pytest.raises(ValueError, match=r"^static_scale: must be a float32 tensor of one element"):
            rms_norm_fp8(x, w, EPS, bad)
        with pytest.raises(ValueError, match=r"^static_scale: "):
            silu_and_mul_fp8(x, bad)
    q, k = x.view(3, 1, 64), x.view(3, 1, 64)
    table = torch.ones(8, 64, device=DEVICE)
    pos = torch.arange(3, device=DEVICE)
    with pytest.raises(ValueError, match=r"^positions: .*dtype"):
        apply_rope_(q, k, pos.int(), table, table)
    with pytest.raises(ValueError, match=r"^cos: .*dtype"):
        apply_rope_(q, k, pos, table.half(), table)
    with pytest.raises(ValueError, match=r"^sin: .*\[max_positions, 64\]"):
        apply_rope_(q, k, pos, table, table[:, :32])
    with pytest.raises(ValueError, match=r"^k: "):
        apply_rope_(q, k[:2], pos, table, table)
