"""The fp8 (W8A8 e4m3) linear layer's parts on the 7B shapes at throughput sizes, under CUDA graphs: the
per-token activation quantization (Triton), torch._scaled_mm with row-wise scales (what Fp8Linear runs:
per-token x per-channel) and with one scale per tensor (cuBLASLt's fp8 GEMM, what a calibrated static
activation scale would allow), next to cuBLAS bf16.

    python bench/fp8_gemm_sweep.py [--m 512,1024,8192]   # CUDA, compute capability >= 8.9
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton

from engine.layers.quantization.fp8 import FP8
from engine.layers.quantization.triton.fp8_quant import fp8_quantize_per_token

SHAPES = {"qkv": (12288, 4096), "o_proj": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008),
          "lm_head": (125696, 4096)}


def graph_us(fn) -> float:
    return 1e3 * triton.testing.do_bench_cudagraph(fn, rep=50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", default="256,512,1024,8192", help="rows of x (tokens), comma-separated")
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__}")
    print(f"{'shape':>8} {'M':>5} | {'bf16':>8} {'fp8 row':>8} {'fp8 tensor':>10} {'quant':>7} | TFLOP/s bf16 / row / tensor")
    for m in (int(v) for v in args.m.split(",")):
        for name, (n, k) in SHAPES.items():
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
            wq = (w / 4).to(FP8)
            w_row = torch.rand(1, n, device="cuda", dtype=torch.float32)
            w_one = torch.rand((), device="cuda", dtype=torch.float32)
            xq, x_row = fp8_quantize_per_token(x)
            x_one = torch.rand((), device="cuda", dtype=torch.float32)
            bf16 = graph_us(lambda: F.linear(x, w))
            row = graph_us(lambda: torch._scaled_mm(xq, wq.t(), scale_a=x_row, scale_b=w_row, out_dtype=torch.bfloat16))
            tensor = graph_us(lambda: torch._scaled_mm(xq, wq.t(), scale_a=x_one, scale_b=w_one,
                                                       out_dtype=torch.bfloat16))
            quant = graph_us(lambda: fp8_quantize_per_token(x))
            flops = 2 * m * n * k / 1e6  # per us -> TFLOP/s
            print(f"{name:>8} {m:5d} | {bf16:8.1f} {row:8.1f} {tensor:10.1f} {quant:7.1f} | "
                  f"{flops / bf16:6.0f} / {flops / row:6.0f} / {flops / tensor:6.0f}")


if __name__ == "__main__":
    main()
