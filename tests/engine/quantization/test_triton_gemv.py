"""The decode GEMVs (M <= 4, no tensor cores) against dequantize-then-matmul in float64, as the GEMM
kernels are checked in test_triton_kernels.py. Without CUDA they run in Triton's interpreter."""
import pytest
import torch

from tests.engine.triton_env import DEVICE, DTYPES  # first: it sets up Triton's interpreter without CUDA

from engine.layers.quantization.triton.w4a16_gemv import w4a16_gemv  # noqa: E402
from engine.layers.quantization.triton.w8a16_gemv import w8a16_gemv  # noqa: E402
from engine.layers.triton.activation import silu_and_mul  # noqa: E402
from tests.engine.quantization.test_triton_kernels import assert_matches, int4_operands, int8_operands  # noqa: E402


# (M, K, N): every M the GEMV takes, ragged N edges, K not a multiple of the tile, SmolLM2's 576
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(1, 64, 48), (2, 100, 96), (3, 576, 40), (4, 256, 17)])
def test_w8a16_gemv_matches_reference(m, k, n, dtype):
    x, qweight, scales, ref = int8_operands(m, k, n, dtype)
    assert_matches(w8a16_gemv(x, qweight, scales), ref, dtype)


def test_w8a16_gemv_covers_the_int8_range():
    """-127..127 and the -128 an int8 tensor may hold go through the mantissa conversion exactly."""
    x = torch.ones(1, 256, device=DEVICE)
    qweight = torch.arange(-128, 128, dtype=torch.int16).to(torch.int8).repeat(2, 1).to(DEVICE)
    y = w8a16_gemv(x, qweight, torch.ones(2, device=DEVICE))
    assert y.tolist() == [[-128.0, -128.0]]  # sum(-128..127)


# (M, K, N, group_size): a short last group (576 = 4.5 x 128), groups of 12 words (96), which no
# power-of-two tile holds whole, K not a multiple of the tile (200 = 25 words)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n,group_size", [(1, 64, 48, 32), (2, 200, 96, 32), (3, 576, 40, 128),
                                              (4, 256, 17, 64), (1, 576, 96, 128), (2, 288, 24, 96)])
def test_w4a16_gemv_matches_reference(m, k, n, group_size, dtype):
    x, t, ref = int4_operands(m, k, n, group_size, dtype)
    assert_matches(w4a16_gemv(x, t["qweight"], t["scales"], t["zeros"], group_size), ref, dtype)


# Tiles of several whole groups (16 words = 4 groups of 32, 2 of 64) and a last tile past K.
@pytest.mark.parametrize("m,k,n,group_size", [(1, 288, 24, 32), (3, 576, 40, 64), (2, 200, 16, 32)])
def test_w4a16_gemv_tiles_of_several_groups(m, k, n, group_size):
    x, t, ref = int4_operands(m, k, n, group_size, torch.float32)
    y = w4a16_gemv(x, t["qweight"], t["scales"], t["zeros"], group_size, blocks={"BLOCK_N": 8, "BLOCK_W": 16})
    assert_matches(y, ref, torch.float32)


# K split over 2, 3 and 5 programs per row tile (5 leaves the last split with nothing but masked
# words), batch 1 and 3, ragged N: the last program of each row tile sums the partials.
@pytest.mark.parametrize("m,k,n,split", [(1, 576, 40, 2), (3, 576, 40, 3), (1, 256, 17, 5), (2, 512, 48, 3)])
def test_w4a16_gemv_split_k_matches_reference(m, k, n, split):
    x, t, ref = int4_operands(m, k, n, 64, torch.float32)
    blocks = {"BLOCK_N": 16, "BLOCK_W": 4, "SPLIT_K": split}
    first = w4a16_gemv(x, t["qweight"], t["scales"], t["zeros"], 64, blocks=blocks)
    assert_matches(first, ref, torch.float32)
    # The arrival counters were reset by the last program: a second launch sums right again, and in
    # the same order (bit-equal).
    again = w4a16_gemv(x, t["qweight"], t["scales"], t["zeros"], 64, blocks=blocks)
    assert torch.equal(first, again)


# gated (rows = [gate; up]): silu(gate) * up as the GEMV's epilogue has the bits of the GEMV, then
# silu_and_mul; ragged outputs, batch 1 and 3, and (int4) K split, applied by the tile's last program.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(1, 64, 34), (3, 100, 96)])
def test_gated_w8a16_gemv_is_gemv_then_silu_and_mul(m, k, n, dtype):
    x, qweight, scales, _ = int8_operands(m, k, n, dtype)
    y = w8a16_gemv(x, qweight, scales, gated=True)
    assert y.shape == (m, n // 2)
    assert torch.equal(y, silu_and_mul(w8a16_gemv(x, qweight, scales)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n,split", [(1, 576, 40, 1), (3, 576, 34, 3)])
def test_gated_w4a16_gemv_is_gemv_then_silu_and_mul(m, k, n, split, dtype):
    x, t, _ = int4_operands(m, k, n, 64, dtype)
    blocks = {"BLOCK_N": 16, "BLOCK_W": 4, "SPLIT_K": split}
    y = w4a16_gemv(x, t["qweight"], t["scales"], t["zeros"], 64, blocks=blocks, gated=True)
    assert y.shape == (m, n // 2)
    assert torch.equal(y, silu_and_mul(w4a16_gemv(x, t["qweight"], t["scales"], t["zeros"], 64, blocks=blocks)))


def test_w4a16_gemv_splits_only_short_n(monkeypatch):
    from engine.layers.triton import split_k as gemv_module

    sms = 132
    monkeypatch.setattr(gemv_module, "multiprocessors", lambda device: sms)
    cuda = torch.device("cuda")
    assert gemv_module.split_for(64, 22, cuda) == 8  # 7B down_proj, 64-row tiles: 512 programs
    assert gemv_module.split_for(64, 8, cuda) == 4  # o_proj: 8 tiles of K, 2 per split
    assert gemv_module.split_for(64, 6, cuda) == 2  # each split keeps >= 2 tiles
    assert gemv_module.split_for(1964, 8, cuda) == 1  # lm_head: the rows alone fill the GPU
    assert gemv_module.split_for(8, 1, cuda) == 1  # one tile of K: nothing to split


def test_gemvs_take_strided_activations():
    x, qweight, scales, ref = int8_operands(2, 64, 48, torch.float32)
    wide = torch.zeros(2, 80, device=DEVICE)
    wide[:, 8:72] = x
    assert_matches(w8a16_gemv(wide[:, 8:72], qweight, scales), ref, torch.float32)  # row stride 80
    x4, t, ref4 = int4_operands(2, 64, 48, 32, torch.float32)
    assert_matches(w4a16_gemv(x4.T.contiguous().T, t["qweight"], t["scales"], t["zeros"], 32), ref4, torch.float32)


@pytest.mark.gpu
def test_w4a16_gemv_takes_bfloat16_rows_not_aligned_to_words():
    """The bf16 path reads x as int32 pairs: a view at an odd offset and odd row stride is copied first,
    and so is a contiguous view that starts at an odd element (that case not yet run on a GPU)."""
    x, t, ref = int4_operands(2, 64, 48, 32, torch.bfloat16)
    wide = torch.zeros(2, 81, dtype=torch.bfloat16, device=DEVICE)
    wide[:, 1:65] = x
    assert_matches(w4a16_gemv(wide[:, 1:65], t["qweight"], t["scales"], t["zeros"], 32), ref, torch.bfloat16)
    flat = torch.zeros(129, dtype=torch.bfloat16, device=DEVICE)  # contiguous, but from an odd element
    flat[1:] = x.reshape(-1)
    assert_matches(w4a16_gemv(flat[1:].view(2, 64), t["qweight"], t["scales"], t["zeros"], 32), ref, torch.bfloat16)


def test_gemvs_reject_bad_inputs():
    x, qweight, scales, _ = int8_operands(5, 64, 48, torch.float32)
    with pytest.raises(ValueError, match=r"^x: the GEMV takes 1..4 rows, got M=5"):
        w8a16_gemv(x, qweight, scales)
    with pytest.raises(ValueError, match=r"^qweight: .*K=32"):
        w8a16_gemv(x[:1], qweight[:, :32].contiguous(), scales)
    with pytest.raises(ValueError, match=r"^scales: .*47 entries"):
        w8a16_gemv(x[:1], qweight, scales[:47])
    x4, t, _ = int4_operands(2, 64, 48, 32, torch.float32)
    with pytest.raises(ValueError, match=r"^x: the GEMV takes 1..4 rows, got M=0"):
        w4a16_gemv(x4[:0], t["qweight"], t["scales"], t["zeros"], 32)
    with pytest.raises(ValueError, match=r"^zeros: expected shape \(48, 2\)"):
        w4a16_gemv(x4, t["qweight"], t["scales"], t["zeros"][:, :1], 32)
    x4, t, _ = int4_operands(1, 100, 48, 32, torch.float32)
    with pytest.raises(ValueError, match=r"^x: .*K must be a multiple of 8, got K=100"):
        w4a16_gemv(x4, t["qweight"], t["scales"], t["zeros"], 32)
    x4, t, _ = int4_operands(1, 192, 48, 96, torch.float32)  # groups of 12 words
    with pytest.raises(ValueError, match=r"^blocks: BLOCK_W=8 words"):
        w4a16_gemv(x4, t["qweight"], t["scales"], t["zeros"], 96, blocks={"BLOCK_N": 8, "BLOCK_W": 8})
    x4, t, _ = int4_operands(1, 64, 48, 32, torch.float32)
    with pytest.raises(ValueError, match=r"^blocks: SPLIT_K must be 1..16"):
        w4a16_gemv(x4, t["qweight"], t["scales"], t["zeros"], 32, blocks={"BLOCK_N": 8, "BLOCK_W": 4, "SPLIT_K": 17})


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 4])
@pytest.mark.parametrize("k,n", [(4096, 11008), (11008, 4096)])
def test_gemvs_on_7b_shapes_bfloat16(m, k, n):
    """Llama-7B's gate/up and down projections at decode sizes, on the autotuned launches."""
    x, qweight, scales, ref = int8_operands(m, k, n, torch.bfloat16)
    assert_matches(w8a16_gemv(x, qweight, scales), ref, torch.bfloat16)
    x, t, ref = int4_operands(m, k, n, 128, torch.bfloat16)
    assert_matches(w4a16_gemv(x, t["qweight"], t["scales"], t["zeros"], 128), ref, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 3])
def test_gemvs_pipelined_loads_give_the_unpipelined_bits(m):
    """NUM_STAGES > 1 stages the weight tiles through shared memory (cp.async) ahead of their use: the
    same products in the same order, so the same bits, split K included."""
    from engine.layers.triton.gemv import gemv

    x, qweight, scales, ref = int8_operands(m, 4096, 1024, torch.bfloat16)
    one, three = ({"BLOCK_N": 8, "BLOCK_K": 1024, "num_warps": 4, "NUM_STAGES": s} for s in (1, 3))
    assert torch.equal(w8a16_gemv(x, qweight, scales, blocks=one), w8a16_gemv(x, qweight, scales, blocks=three))
    x, t, ref = int4_operands(m, 4096, 1024, 128, torch.bfloat16)
    for split in (1, 4):
        one, three = ({"BLOCK_N": 32, "BLOCK_W": 32, "num_warps": 4, "SPLIT_K": split, "NUM_STAGES": s} for s in (1, 3))
        y = w4a16_gemv(x, t["qweight"], t["scales"], t["zeros"], 128, blocks=three)
        assert torch.equal(w4a16_gemv(x, t["qweight"], t["scales"], t["zeros"], 128, blocks=one), y)
        assert_matches(y, ref, torch.bfloat16)
    w = torch.randn(1024, 4096, dtype=torch.bfloat16, device=DEVICE)
    one, three = ({"BLOCK_N": 8, "BLOCK_K": 512, "num_warps": 4, "SPLIT_K": 2, "NUM_STAGES": s} for s in (1, 3))
    assert torch.equal(gemv(x, w, blocks=one), gemv(x, w, blocks=three))


def test_w4a16_decode_takes_the_gemv_for_every_decode_size():
    from engine.layers.quantization.triton.w4a16_gemv import prefers_gemv

    assert prefers_gemv(1, 4096) and prefers_gemv(4, 4096)
    assert prefers_gemv(1, 11008)  # whatever N: a short N splits K instead of leaving SMs idle
    assert not prefers_gemv(5, 4096) and not prefers_gemv(1, 4100)
