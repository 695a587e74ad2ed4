"""Scratch, session 21: does splitting the keys help the unsplit decode attention of the throughput shapes
(the last wave of (sequence, KV head) programs running part-empty)? From the repository root on a GPU:
PYTHONPATH=. python3 docs/benchmarks/gpu_7b_h100/session21/split_probe.py
"""
import sys
import torch
import triton
sys.path.insert(0, "bench")  # attention_sweep.make_batch
from attention_sweep import make_batch
from engine.layers.attention.triton import paged_attention as pa

print(torch.cuda.get_device_name())
default_split, default_fp8 = pa.LAUNCH["decode_split"], pa.LAUNCH["decode_fp8"]
cands = [(128, 4, 1), (64, 4, 2), (64, 2, 2), (128, 4, 2), (64, 4, 3), (64, 2, 3), (128, 8, 2)]
shapes = [("bf16", 53, 2112), ("bf16", 48, 2112), ("bf16", 64, 2112), ("bf16", 96, 1100),
          ("fp8", 112, 2112), ("fp8", 112, 1100)]
for cache, seqs, ctx in shapes:
    dtype = torch.float8_e4m3fn if cache == "fp8" else torch.bfloat16
    args, nbytes = make_batch(seqs, ctx, 1, 32, 32, cache_dtype=dtype, head_major=True)
    out = torch.empty_like(args[0])
    def t(splits):
        return triton.testing.do_bench(lambda: pa.paged_attention(*args, out=out, num_splits=splits), warmup=10, rep=60,
                                       return_mode="median")
    base = t(1)
    print(f"\n{cache} {seqs} seqs x {ctx}: unsplit {1e3 * base:.1f} us ({nbytes / base / 1e9:.2f} TB/s)", flush=True)
    for splits in (2, 3, 4, 6):
        row = []
        for n, w, s in cands:
            pa.LAUNCH["decode_split"] = pa.LaunchConfig(block_m=16, block_n=n, num_warps=w, num_stages=s)
            if cache == "fp8":
                pa.LAUNCH["decode_fp8"] = pa.LaunchConfig(block_m=16, block_n=n, num_warps=w, num_stages=s)
            try:
                ms = t(splits)
                row.append(f"{n}/{w}/{s} {1e3 * ms:6.1f} ({nbytes / ms / 1e9:.2f})")
            except Exception as e:
                row.append(f"{n}/{w}/{s} fail {type(e).__name__}")
        print(f"  splits {splits}: " + "  ".join(row), flush=True)
    pa.LAUNCH["decode_split"], pa.LAUNCH["decode_fp8"] = default_split, default_fp8
