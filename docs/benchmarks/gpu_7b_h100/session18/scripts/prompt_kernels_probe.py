import time, torch, triton, sys
sys.path.insert(0, "bench")
from torch.nn.attention import sdpa_kernel, SDPBackend
from torch.nn.attention.varlen import varlen_attn
from attention_sweep import make_step
from engine.layers.attention.triton import paged_attention as pa

def bench(f):
    return 1e3 * triton.testing.do_bench(f, warmup=20, rep=200, return_mode="median")

print(torch.cuda.get_device_name(), torch.__version__, "cudnn", torch.backends.cudnn.version())
for seqs, L in [(4, 2048), (64, 128), (1, 2048)]:
    flops = 2 * 2 * seqs * 32 * L * L / 2 * 128
    T = seqs * L
    q4 = torch.randn(seqs, 32, L, 128, device="cuda", dtype=torch.bfloat16)
    res = {}
    res["sdpa default"] = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q4, q4, q4, is_causal=True))
    for name, be in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        try:
            with sdpa_kernel(be):
                res["sdpa " + name] = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q4, q4, q4, is_causal=True))
        except Exception as e:
            print("  sdpa", name, "failed", type(e).__name__, str(e)[:200])
    qkv = torch.randn(T, 96 * 128, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv[:, :4096].view(T, 32, 128), qkv[:, 4096:8192].view(T, 32, 128), qkv[:, 8192:].view(T, 32, 128)
    qc, kc, vc = q.contiguous(), k.contiguous(), v.contiguous()
    cu = torch.arange(0, T + 1, L, device="cuda", dtype=torch.int32)
    res["varlen strided"] = bench(lambda: varlen_attn(q, k, v, cu, cu, L, L, window_size=(-1, 0)))
    res["varlen contiguous"] = bench(lambda: varlen_attn(qc, kc, vc, cu, cu, L, L, window_size=(-1, 0)))
    res["aten flash varlen"] = bench(lambda: torch.ops.aten._flash_attention_forward(qc, kc, vc, cu, cu, L, L, 0.0, True, False))
    try:
        o = torch.ops.aten._cudnn_attention_forward(qc, kc, vc, None, cu, cu, L, L, False, 0.0, True, False)[0]
        ref = torch.nn.functional.scaled_dot_product_attention(qc[:L].transpose(0, 1).float(), kc[:L].transpose(0, 1).float(), vc[:L].transpose(0, 1).float(), is_causal=True).transpose(0, 1)
        print("  cudnn ragged shape", tuple(o.shape), "err seq0", (o[:L].float() - ref).abs().max().item())
        res["aten cudnn ragged"] = bench(lambda: torch.ops.aten._cudnn_attention_forward(qc, kc, vc, None, cu, cu, L, L, False, 0.0, True, False))
    except Exception as e:
        print("  cudnn ragged failed", type(e).__name__, str(e)[:300])
    args = make_step([(L, L)] * seqs, 32, 32, head_major=True)
    res["ours paged bf16"] = bench(lambda: pa.paged_attention(*args))
    for name, us in res.items():
        print(f"{seqs} x {L} {name:22s} {us:8.1f} us {flops / us / 1e6:6.0f} TFLOP/s")
    # GQA through varlen without enable_gqa (torch 2.11 has none)
    kg, vg = kc[:, :8].contiguous(), vc[:, :8].contiguous()
    try:
        o = varlen_attn(qc, kg, vg, cu, cu, L, L, window_size=(-1, 0))
        ref = torch.nn.functional.scaled_dot_product_attention(qc[:L].transpose(0, 1).float(), kg[:L].transpose(0, 1).float(), vg[:L].transpose(0, 1).float(), is_causal=True, enable_gqa=True).transpose(0, 1)
        print("  varlen gqa err seq0", (o[:L].float() - ref).abs().max().item())
    except Exception as e:
        print("  varlen gqa failed", type(e).__name__, str(e)[:300])
# host overhead per call, tiny inputs
q = torch.randn(16, 32, 128, device="cuda", dtype=torch.bfloat16); cu = torch.tensor([0, 16], device="cuda", dtype=torch.int32)
for name, f in [("varlen_attn", lambda: varlen_attn(q, q, q, cu, cu, 16, 16, window_size=(-1, 0))),
                ("aten flash", lambda: torch.ops.aten._flash_attention_forward(q, q, q, cu, cu, 16, 16, 0.0, True, False))]:
    for _ in range(50): f()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(500): f()
    t = (time.perf_counter() - t) / 500; torch.cuda.synchronize()
    print(f"host time per call {name}: {1e6 * t:.1f} us")
