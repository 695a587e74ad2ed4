"""Programmatic dependent launch (engine/layers/triton/pdl.py): launched only where the GPU has it, and
chains of the decode step's kernels under a CUDA graph give the same bits with it as without it, the
loads some of them make before their wait included."""
import pytest
import torch

from tests.engine.triton_env import DEVICE  # first: it sets up Triton's interpreter without CUDA

from engine.layers.attention.triton.paged_attention import paged_attention  # noqa: E402
from engine.layers.attention.triton.rope_store_kv import rope_store_kv  # noqa: E402
from engine.layers.quantization.triton.w4a16_gemv import w4a16_gemv  # noqa: E402
from engine.layers.quantization.triton.w8a16_gemv import w8a16_gemv  # noqa: E402
from engine.layers.rotary import RotaryEmbedding  # noqa: E402
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


def attention_chain(qkv, k_cache, v_cache, slots, positions, cos, sin, block_tables, context_lens, query_start,
                    heads, kv_heads, d):
    """qkv GEMV's output -> RoPE + KV store -> split attention: the attention reads the K/V of earlier
    positions and its metadata before its wait, and the step's own position, just stored, after it."""
    hq, hk = heads * d, kv_heads * d
    q = qkv[:, :hq].view(-1, heads, d)
    k, v = qkv[:, hq:hq + hk].view(-1, kv_heads, d), qkv[:, hq + hk:].view(-1, kv_heads, d)
    rope_store_kv(q, k, v, k_cache, v_cache, slots, positions, cos, sin)
    return paged_attention(q, k_cache, v_cache, block_tables, context_lens, query_start, 1, d ** -0.5, num_splits=4)


@pytest.mark.gpu
def test_pdl_rope_store_then_split_attention_in_a_cuda_graph_matches_plain_launches(pdl_switch):
    g = torch.Generator(device="cuda").manual_seed(0)
    heads, kv_heads, d, block_size, blocks = 8, 2, 128, 16, 64
    contexts = [300, 17, 129]  # the newest position: inside a split's first tile, alone, at a tile's start
    seqs = len(contexts)
    rotary = RotaryEmbedding(d, 1024, 10000.0, None).to("cuda")
    qkv = torch.randn(seqs, (heads + 2 * kv_heads) * d, generator=g, device="cuda").to(torch.bfloat16)
    cache = torch.randn(2, blocks, block_size, kv_heads, d, generator=g, device="cuda").to(torch.bfloat16)
    block_tables = torch.randperm(blocks, generator=g, device="cuda").to(torch.int32)[:seqs * 20].view(seqs, 20)
    context_lens = torch.tensor(contexts, dtype=torch.int32, device="cuda")
    positions = context_lens.long() - 1
    rows = torch.arange(seqs, device="cuda")
    slots = block_tables[rows, positions // block_size].long() * block_size + positions % block_size
    query_start = torch.arange(seqs + 1, dtype=torch.int32, device="cuda")
    meta = (slots, positions, rotary.cos, rotary.sin, block_tables, context_lens, query_start, heads, kv_heads, d)

    pdl_switch(False)
    want_cache = cache.clone()
    want = attention_chain(qkv.clone(), want_cache[0], want_cache[1], *meta)

    pdl_switch(True)
    fresh_qkv, got_cache = qkv.clone(), cache.clone()
    attention_chain(fresh_qkv.clone(), got_cache[0], got_cache[1], *meta)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = attention_chain(fresh_qkv, got_cache[0], got_cache[1], *meta)
    for _ in range(3):  # each replay starts from the cache before the step, and q before its rotation
        fresh_qkv.copy_(qkv)
        got_cache.copy_(cache)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(got_cache, want_cache) and torch.equal(got, want)
