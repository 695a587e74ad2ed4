import torch, triton
from torch.nn.attention.varlen import varlen_attn
def bench(f):
    return 1e3 * triton.testing.do_bench(f, warmup=20, rep=100, return_mode="median")
for seqs, L in [(4, 2048), (32, 128)]:
    T = seqs * L
    q = torch.randn(seqs, 32, L, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(seqs, 8, L, 128, device="cuda", dtype=torch.bfloat16)
    f = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)
    f(); torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    f(); torch.cuda.synchronize()
    extra = (torch.cuda.max_memory_allocated() - base) / 2**20
    kr = k.repeat_interleave(4, 1)
    qv, kv = q.transpose(1, 2).reshape(T, 32, 128).contiguous(), k.transpose(1, 2).reshape(T, 8, 128).contiguous()
    cu = torch.arange(0, T + 1, L, device="cuda", dtype=torch.int32)
    print(f"gqa {seqs} x {L}: sdpa enable_gqa {bench(f):.1f} us (peak extra {extra:.0f} MiB) | sdpa on repeated kv {bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, kr, kr, is_causal=True)):.1f} us"
          f" | repeat+sdpa {bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), k.repeat_interleave(4, 1), is_causal=True)):.1f} us | varlen {bench(lambda: varlen_attn(qv, kv, kv, cu, cu, L, L, window_size=(-1, 0))):.1f} us")
