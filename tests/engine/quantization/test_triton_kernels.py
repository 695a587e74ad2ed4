"""The Triton weight-only GEMMs against dequantize-then-matmul in float64. Without CUDA they run in
Triton's interpreter on small shapes; bfloat16 runs on CUDA only (Triton 3.6's interpreter converts
integers to bfloat16 and multiplies bfloat16 wrongly)."""
import pytest
import torch

from tests.engine.triton_env import DEVICE, DTYPES  # first: it sets up Triton's interpreter without CUDA

from engine.layers.quantization import int4  # noqa: E402
from engine.layers.quantization.config import QuantizationConfig  # noqa: E402
from engine.layers.quantization.triton.w4a16 import w4a16_matmul  # noqa: E402
from engine.layers.quantization.triton.w8a16 import w8a16_matmul  # noqa: E402

# Largest error allowed, relative to the largest |output|: fp32 accumulates either way, so what is
# left is the output's own rounding.
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def int8_operands(m: int, k: int, n: int, dtype: torch.dtype, scale_dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(m * 7919 + k * 31 + n)
    x = torch.randn(m, k, generator=g).to(dtype)
    qweight = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    scales = (torch.rand(n, generator=g) * 0.02 + 1e-3).to(scale_dtype)
    ref = x.double() @ (qweight.double() * scales.double()[:, None]).T  # [M, N]
    return x.to(DEVICE), qweight.to(DEVICE), scales.to(DEVICE), ref


def int4_operands(m: int, k: int, n: int, group_size: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(m * 7919 + k * 31 + n + group_size)
    groups = -(-k // group_size)
    x = torch.randn(m, k, generator=g).to(dtype)
    q = torch.randint(0, 16, (n, k), generator=g)
    scales = torch.rand(n, groups, generator=g) * 0.02 + 1e-3
    zeros = torch.randint(0, 16, (n, groups), generator=g)
    tensors = int4.to_tensors(q, scales, zeros)
    w = int4.dequantize(tensors, QuantizationConfig("int4_wo", group_size=group_size), k)  # [N, K]
    ref = x.double() @ w.double().T
    if int4.has_kernel_order(k):  # the kernels take whole words in their own nibble order
        tensors["qweight"] = int4.to_kernel_order(tensors["qweight"], k)
    return x.to(DEVICE), {name: t.to(DEVICE) for name, t in tensors.items()}, ref


def assert_matches(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert y.dtype == dtype and y.shape == ref.shape
    err = (y.double().cpu() - ref).abs().max().item()
    assert err <= REL_TOL[dtype] * ref.abs().max().item(), f"max error {err} vs max |ref| {ref.abs().max()}"


# (M, K, N): ragged M and N edges, K not a multiple of the K tile (100), 576 as in SmolLM2
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(1, 64, 48), (5, 100, 96), (33, 576, 48), (16, 256, 96)])
def test_w8a16_matches_reference(m, k, n, dtype):
    x, qweight, scales, ref = int8_operands(m, k, n, dtype)
    assert_matches(w8a16_matmul(x, qweight, scales), ref, dtype)


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
def test_w8a16_takes_scales_of_any_float_dtype(scale_dtype):
    x, qweight, scales, ref = int8_operands(5, 64, 48, torch.float32, scale_dtype)
    assert_matches(w8a16_matmul(x, qweight, scales), ref, torch.float32)


# (M, K, N, group_size): 99 is odd (a padding nibble), 576 with 128 ends in a short group
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n,group_size", [(1, 64, 48, 32), (5, 99, 96, 32), (33, 576, 48, 128),
                                              (5, 256, 96, 64), (1, 576, 96, 128)])
def test_w4a16_matches_reference(m, k, n, group_size, dtype):
    x, t, ref = int4_operands(m, k, n, group_size, dtype)
    assert_matches(w4a16_matmul(x, t["qweight"], t["scales"], t["zeros"], group_size), ref, dtype)


# Split-K (W4A16 decode on CUDA picks it for long K): partials over K ranges summed after the kernel;
# 4 splits of K=64 leave whole ranges past K, which must add nothing.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split_k", [2, 3, 4])
@pytest.mark.parametrize("m,k,n,group_size", [(1, 576, 48, 128), (3, 64, 96, 32)])
def test_w4a16_split_k_matches_reference(m, k, n, group_size, split_k, dtype):
    x, t, ref = int4_operands(m, k, n, group_size, dtype)
    assert_matches(w4a16_matmul(x, t["qweight"], t["scales"], t["zeros"], group_size, split_k=split_k), ref, dtype)


def test_w4a16_split_k_past_k_reads_no_group_past_the_last():
    """3 splits of a 64-column K (16-byte tiles): the last split lies wholly past K. Its tile's group
    index is past the last group; the scales there are NaN here (a wider tensor viewed narrower), which
    an unmasked read would turn into a NaN output (0 * NaN) - as it did, now and then, on whatever memory
    followed the scales."""
    x, t, ref = int4_operands(3, 64, 96, 32, torch.float32)
    wide = torch.full((96, 3), float("nan"), device=DEVICE)
    wide[:, :2] = t["scales"]
    y = w4a16_matmul(x, t["qweight"], wide[:, :2], t["zeros"], 32, split_k=3)
    assert_matches(y, ref, torch.float32)


# Each layout a launch may take (the autotuner picks per M bucket on CUDA): x @ w.T, or w @ x.T with the
# weights as the register operand; int4's swapped tiles may also scale the weights before the MMA.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("m,k,n", [(5, 100, 96), (33, 576, 48)])
def test_w8a16_layouts_match_reference(m, k, n, swap, dtype):
    x, qweight, scales, ref = int8_operands(m, k, n, dtype)
    blocks = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "SWAP_AB": swap}
    assert_matches(w8a16_matmul(x, qweight, scales, blocks=blocks), ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", [{}, {"SWAP_AB": True}, {"SWAP_AB": True, "SCALE_WEIGHTS": True}])
@pytest.mark.parametrize("m,k,n,group_size", [(5, 99, 96, 32), (33, 576, 48, 128)])
def test_w4a16_layouts_match_reference(m, k, n, group_size, layout, dtype):
    x, t, ref = int4_operands(m, k, n, group_size, dtype)
    blocks = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, **layout}
    assert_matches(w4a16_matmul(x, t["qweight"], t["scales"], t["zeros"], group_size, blocks=blocks), ref, dtype)


def test_w4a16_rejects_a_k_tile_across_groups():
    x, t, _ = int4_operands(5, 128, 32, 32, torch.float32)
    with pytest.raises(ValueError, match="BLOCK_K=64 must divide group_size=32"):
        w4a16_matmul(x, t["qweight"], t["scales"], t["zeros"], 32, blocks={"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64})


@pytest.mark.gpu
def test_w4a16_decode_splits_long_k():
    """At M=1 on a GPU the down_proj shape (N=4096, K=11008) is split over K, qkv's (K=4096) is not;
    the result matches either way."""
    from engine.layers.quantization.triton import split_k_for

    assert split_k_for(4096 // 32, 11008 // 128, torch.device("cuda")) > 1
    assert split_k_for(12288 // 32, 4096 // 128, torch.device("cuda")) == 1
    x, t, ref = int4_operands(1, 11008, 4096, 128, torch.bfloat16)
    assert_matches(w4a16_matmul(x, t["qweight"], t["scales"], t["zeros"], 128), ref, torch.bfloat16)


def test_strided_and_empty_activations():
    x, qweight, scales, ref = int8_operands(5, 64, 48, torch.float32)
    wide = torch.zeros(5, 80, device=DEVICE)
    wide[:, 8:72] = x
    assert_matches(w8a16_matmul(wide[:, 8:72], qweight, scales), ref, torch.float32)  # row stride 80
    assert_matches(w8a16_matmul(x.T.contiguous().T, qweight, scales), ref, torch.float32)  # column-major
    x4, t, ref4 = int4_operands(5, 64, 48, 32, torch.float32)
    assert_matches(w4a16_matmul(x4.T.contiguous().T, t["qweight"], t["scales"], t["zeros"], 32), ref4,
                   torch.float32)
    assert w8a16_matmul(x[:0], qweight, scales).shape == (0, 48)


def test_w8a16_rejects_bad_inputs(monkeypatch):
    x, qweight, scales, _ = int8_operands(2, 64, 48, torch.float32)
    with pytest.raises(ValueError, match=r"^x: .*dtype"):
        w8a16_matmul(x.double(), qweight, scales)
    with pytest.raises(ValueError, match=r"^x: .*2-D"):
        w8a16_matmul(x[0], qweight, scales)
    with pytest.raises(ValueError, match=r"^qweight: .*dtype"):
        w8a16_matmul(x, qweight.to(torch.uint8), scales)
    with pytest.raises(ValueError, match=r"^qweight: .*K=32"):
        w8a16_matmul(x, qweight[:, :32].contiguous(), scales)
    with pytest.raises(ValueError, match=r"^qweight: .*contiguous"):
        w8a16_matmul(x, torch.empty(64, 48, dtype=torch.int8, device=DEVICE).T, scales)
    with pytest.raises(ValueError, match=r"^scales: .*47 entries"):
        w8a16_matmul(x, qweight, scales[:47])
    with pytest.raises(ValueError, match=r"^scales: .*floating"):
        w8a16_matmul(x, qweight, scales.to(torch.int32))
    with pytest.raises(ValueError, match=r"^scales: .*meta"):
        w8a16_matmul(x, qweight, scales.to("meta"))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # outside the interpreter, CPU x is an error
    with pytest.raises(ValueError, match=r"^x: .*CUDA"):
        w8a16_matmul(x.cpu(), qweight.cpu(), scales.cpu())


def test_w4a16_rejects_bad_inputs():
    x, t, _ = int4_operands(2, 64, 48, 32, torch.float32)
    qweight, scales, zeros = t["qweight"], t["scales"], t["zeros"]
    with pytest.raises(ValueError, match=r"^qweight: .*dtype"):
        w4a16_matmul(x, qweight.to(torch.int8), scales, zeros, 32)
    with pytest.raises(ValueError, match=r"^qweight: .*K=128"):
        w4a16_matmul(torch.cat([x, x], 1), qweight, scales, zeros, 32)
    with pytest.raises(ValueError, match=r"^group_size: .*48"):
        w4a16_matmul(x, qweight, scales, zeros, 48)
    with pytest.raises(ValueError, match=r"^group_size"):
        w4a16_matmul(x, qweight, scales, zeros, 0)
    with pytest.raises(ValueError, match=r"^scales: .*\(48, 2\)"):
        w4a16_matmul(x, qweight, scales[:, :1], zeros, 32)  # G must be ceil(64 / 32)
    with pytest.raises(ValueError, match=r"^scales: .*\(48, 1\)"):
        w4a16_matmul(x, qweight, scales, zeros, 64)
    with pytest.raises(ValueError, match=r"^zeros: .*dtype"):
        w4a16_matmul(x, qweight, scales, zeros.to(torch.int32), 32)
    with pytest.raises(ValueError, match=r"^zeros: .*meta"):
        w4a16_matmul(x, qweight, scales, zeros.to("meta"), 32)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 128, 300])
def test_7b_shape_bfloat16(m):
    """Llama-7B's gate/up projection at decode and prefill sizes, on the real (autotuned) kernels."""
    k, n = 4096, 11008
    x, qweight, scales, ref = int8_operands(m, k, n, torch.bfloat16)
    assert_matches(w8a16_matmul(x, qweight, scales), ref, torch.bfloat16)
    x, t, ref = int4_operands(m, k, n, 128, torch.bfloat16)
    assert_matches(w4a16_matmul(x, t["qweight"], t["scales"], t["zeros"], 128), ref, torch.bfloat16)
