"""Experiment: the tensor-core int4 GEMV (w4a16_mma.cu) against the Triton GEMV the engine runs, on the
7B decode shapes. Not wired into the engine: it moves there only if it is faster and exact here.

    python bench/int4_mma/probe.py     # CUDA (needs nvcc): build, check, time

The fragment layout itself is checked on the CPU by tests/bench/test_int4_mma_layout.py.

The CUDA run builds the kernel with torch.utils.cpp_extension (nvcc, ~1 min the first time), checks
every launch variant against the dequantized float32 product and the Triton GEMV at M = 1 and 4, then
times each under CUDA graphs, programmatic dependent launch off (the kernels' own time).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import torch
import triton

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parents[1])]  # layout, quant_gemm_sweep, engine

from layout import scale_zero_words, to_mma_fragments  # noqa: E402
from quant_gemm_sweep import GROUP, SHAPES  # noqa: E402  (GROUP: w4a16_mma.cu's GROUP_SIZE, 128)

from engine.layers.quantization import int4  # noqa: E402
from engine.layers.quantization.triton.w4a16_gemv import w4a16_gemv  # noqa: E402
from engine.layers.triton.pdl import set_programmatic_launch  # noqa: E402
from engine.layers.triton.split_k import arrival_counters  # noqa: E402

VARIANTS = [(2, 1), (2, 2), (2, 4), (4, 1), (4, 2), (4, 4), (8, 1), (8, 2)]  # (DEPTH, TILES), as in LAUNCHER

LAUNCHER = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>

template <int D, int T>
void launch_variant(const torch::Tensor& w, const torch::Tensor& x, const torch::Tensor& sz, torch::Tensor& y,
                    torch::Tensor& part, torch::Tensor& counters, int num_groups, int split) {
  const int M = x.size(0), K = x.size(1), N = y.size(1);
  const int rows_per_block = 16 * T * w4a16_mma::WARPS;
  const int chunks_per_split = (K / 64 + split - 1) / split;
  const dim3 grid((N + rows_per_block - 1) / rows_per_block, split);
  w4a16_mma::gemv<D, T><<<grid, w4a16_mma::WARPS * 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const uint4*>(w.data_ptr()), reinterpret_cast<const __nv_bfloat16*>(x.data_ptr()),
      reinterpret_cast<const uint2*>(sz.data_ptr()), reinterpret_cast<__nv_bfloat16*>(y.data_ptr()),
      part.data_ptr<float>(), counters.data_ptr<int>(), M, N, K, (int)x.stride(0), (int)y.stride(0), num_groups,
      chunks_per_split);
}

void launch(torch::Tensor w, torch::Tensor x, torch::Tensor sz, torch::Tensor y, torch::Tensor part,
            torch::Tensor counters, int64_t num_groups, int64_t split, int64_t depth, int64_t tiles) {
#define VARIANT(D, T) \
  if (depth == D && tiles == T) return launch_variant<D, T>(w, x, sz, y, part, counters, num_groups, split);
  VARIANT(2, 1) VARIANT(2, 2) VARIANT(2, 4) VARIANT(4, 1) VARIANT(4, 2) VARIANT(4, 4) VARIANT(8, 1) VARIANT(8, 2)
  TORCH_CHECK(false, "w4a16_mma: no variant DEPTH=", depth, " TILES=", tiles);
}
"""
DECLARATION = ("void launch(torch::Tensor w, torch::Tensor x, torch::Tensor sz, torch::Tensor y, torch::Tensor part, "
               "torch::Tensor counters, int64_t num_groups, int64_t split, int64_t depth, int64_t tiles);")


def build():
    from torch.utils.cpp_extension import load_inline

    kernel = (HERE / "w4a16_mma.cu").read_text()
    return load_inline(name="inferline_w4a16_mma_probe", cpp_sources=DECLARATION, cuda_sources=kernel + LAUNCHER,
                       functions=["launch"], extra_cuda_cflags=["-O3", "-gencode=arch=compute_90,code=sm_90"])


def operands(m: int, n: int, k: int):
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, device="cuda")
    scales = (torch.rand(n, k // GROUP, device="cuda") * 0.02).to(torch.bfloat16)
    zeros = torch.randint(0, 16, (n, k // GROUP), dtype=torch.uint8, device="cuda")
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    packed = int4.pack(q)
    w = (q.float() - zeros.float().repeat_interleave(GROUP, 1)) * scales.float().repeat_interleave(GROUP, 1)
    return x, packed, scales, zeros, x.float() @ w.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", default="1,4", help="rows of x to check and time")
    opts = parser.parse_args()
    set_programmatic_launch(False)
    module = build()
    counters = arrival_counters(torch.device("cuda"))
    for m in (int(v) for v in opts.m.split(",")):
        for shape, (n, k) in SHAPES.items():
            x, packed, scales, zeros, ref = operands(m, n, k)
            frags, sz = to_mma_fragments(packed, k, GROUP), scale_zero_words(scales, zeros)
            ordered = int4.to_kernel_order(packed, k)
            scale = ref.abs().max().item()
            triton_call = lambda: w4a16_gemv(x, ordered, scales, zeros, GROUP)  # noqa: E731
            y_triton = triton_call()
            ms = triton.testing.do_bench_cudagraph(triton_call, rep=50)
            nbytes = packed.numel() + scales.numel() * 2 + zeros.numel()
            err = (y_triton.float() - ref).abs().max().item() / scale
            print(f"\n{shape} N={n} K={k} M={m}: Triton GEMV {1e3 * ms:6.1f} us {nbytes / ms / 1e9:5.2f} TB/s "
                  f"(max err {err:.1e} of max |y|)", flush=True)
            rows = []
            for depth, tiles in VARIANTS:
                for split in (1, 2, 4, 8):
                    y = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
                    part = torch.empty(split, m, n, device="cuda", dtype=torch.float32)
                    call = lambda: module.launch(frags, x, sz, y, part, counters, k // GROUP, split, depth, tiles)  # noqa: E731,B023
                    call()
                    err = (y.float() - ref).abs().max().item() / scale
                    again = y.clone()
                    call()
                    ms = triton.testing.do_bench_cudagraph(call, rep=50)
                    rows.append((ms, depth, tiles, split, err, torch.equal(again, y)))
            rows.sort()
            for ms, depth, tiles, split, err, same in rows[:4]:
                print(f"  mma DEPTH {depth} TILES {tiles} split {split}: {1e3 * ms:6.1f} us "
                      f"{nbytes / ms / 1e9:5.2f} TB/s (max err {err:.1e}, same bits twice: {same})", flush=True)
            worst = max(r[4] for r in rows)
            print(f"  worst error over all {len(rows)} launches: {worst:.1e}; all repeat exactly: "
                  f"{all(r[5] for r in rows)}", flush=True)


if __name__ == "__main__":
    main()
