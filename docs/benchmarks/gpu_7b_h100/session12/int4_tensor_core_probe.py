"""Scratch probe (session 12): the int4 tensor-core GEMM (w4a16.py, weights as wgmma's register operand)
at M = 1 with decode-shaped launches and split K, against the GEMV, on the 7B qkv / gate_up / down shapes."""
import sys
sys.path.insert(0, "bench")
import torch, triton
from quant_gemm_sweep import w4_args, GROUP
from engine.layers.quantization.triton.w4a16 import w4a16_matmul
from engine.layers.quantization.triton.w4a16_gemv import w4a16_gemv
from engine.layers.triton.pdl import set_programmatic_launch
set_programmatic_launch(False)
for name, (n, k) in {"qkv": (12288, 4096), "gate_up": (22016, 4096), "down": (4096, 11008)}.items():
    args, nbytes = w4_args(1, n, k)
    q, s, z = args[1], args[2], args[3]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    f = lambda: w4a16_gemv(x, q, s, z, GROUP); f()
    print(f"{name}: GEMV {1e3 * triton.testing.do_bench_cudagraph(f, rep=30):.1f} us", flush=True)
    rows = []
    for bn in (64, 128):
        for warps in (4, 8):
            for split in (1, 2, 4, 8):
                b = {"BLOCK_M": 16, "BLOCK_N": bn, "BLOCK_K": 128, "SWAP_AB": True, "SCALE_WEIGHTS": True,
                     "num_warps": warps, "num_stages": 4}
                g = lambda: w4a16_matmul(x, q, s, z, GROUP, split_k=split, blocks=b)
                try:
                    g(); ms = triton.testing.do_bench_cudagraph(g, rep=30)
                except Exception as e:
                    print("  failed", bn, warps, split, type(e).__name__); continue
                rows.append((ms, bn, warps, split))
    rows.sort()
    for ms, bn, warps, split in rows[:4]:
        print(f"  TC GEMM {1e3 * ms:.1f} us  BLOCK_N {bn} warps {warps} split_k {split} (split summed by torch after)", flush=True)
