"""Time the Triton W4A16 and W8A16 kernels at decode (M=1) on the 7B linear shapes over launch
configurations, next to cuBLAS bf16, and print each shape's best: what the kernels' CONFIGS lists
should hold for decode.

    python bench/quant_gemm_sweep.py [--m 1]      # CUDA only
    python bench/quant_gemm_sweep.py --gemv --m 1 # the decode GEMVs (M <= 4) over their launch space
    python bench/quant_gemm_sweep.py --prefill --m 16,64,128,2048  # the GEMMs, each operand layout

Bytes counted: the quantized weights (plus scales) read once; the floor of a memory-bound GEMV.
"""
from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F
import triton

from engine.layers.quantization.triton import m_bucket
from engine.layers.quantization.triton.w4a16 import _w4a16_kernel, w4a16_matmul
from engine.layers.quantization.triton.w4a16_gemv import w4a16_gemv
from engine.layers.quantization.triton.w8a16 import _w8a16_kernel, w8a16_matmul
from engine.layers.quantization.triton.w8a16_gemv import w8a16_gemv
from engine.layers.triton.pdl import set_programmatic_launch

SHAPES = {"qkv": (12288, 4096), "o_proj": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008),
          "lm_head": (125696, 4096)}
GROUP = 128


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def w4_args(m: int, n: int, k: int):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    q = torch.randint(0, 256, (n, k // 2), device="cuda", dtype=torch.uint8)
    s = torch.rand(n, k // GROUP, device="cuda", dtype=torch.bfloat16)
    z = torch.randint(0, 16, (n, k // GROUP), device="cuda", dtype=torch.uint8)
    y = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    xs = x.reshape(m, k // 2, 2).transpose(1, 2).contiguous()
    args = (xs, q, s, z, y, m, n, m_bucket(m), xs.stride(0), q.stride(0), s.stride(0), s.stride(1), z.stride(0),
            z.stride(1), y.stride(0), k, GROUP, "tf32")
    return args, q.numel() + s.numel() * 2 + z.numel()


def w8_args(m: int, n: int, k: int):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    q = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8)
    s = torch.rand(n, device="cuda", dtype=torch.bfloat16)
    y = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    args = (x, q, s, y, m, n, m_bucket(m), x.stride(0), q.stride(0), s.stride(0), y.stride(0), k, "tf32")
    return args, q.numel() + s.numel() * 2


def sweep(name: str, kernel, args: tuple, n: int, nbytes: int, grid_space: dict) -> None:
    rows = []
    for bn, bk, warps, stages in itertools.product(*grid_space.values()):
        grid = (1, triton.cdiv(n, bn))
        try:
            ms = bench(lambda: kernel[grid](*args, BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
                                            num_stages=stages))
        except Exception as err:  # out of shared memory, say
            print(f"    ({bn}, {bk}, {warps}, {stages}) failed: {type(err).__name__}")
            continue
        rows.append((ms, (16, bn, bk, warps, stages)))
    rows.sort()
    for ms, config in rows[:3]:
        print(f"  {name}: {1e3 * ms:7.1f} us  {nbytes / ms / 1e9:5.2f} TB/s  (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) = {config}")


def shape_header(shape: str, n: int, k: int, m: int) -> torch.Tensor:
    """Print the shape's cuBLAS bf16 time (the baseline); the bf16 activations x [m, k] every kernel takes."""
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    ms = triton.testing.do_bench_cudagraph(lambda: F.linear(x, w), rep=50)
    print(f"\n{shape} N={n} K={k} M={m}: cuBLAS bf16 {1e3 * ms:.1f} us ({2 * n * k / ms / 1e9:.2f} TB/s)")
    return x


def time_call(label: str, fn, nbytes: int) -> None:
    """One wrapper as the engine calls it, under a CUDA graph (compiled and tuned outside it first)."""
    fn()
    ms = triton.testing.do_bench_cudagraph(fn, rep=50)
    print(f"  {label}: {1e3 * ms:7.1f} us  {nbytes / ms / 1e9:5.2f} TB/s")


def sweep_gemv(name: str, call, nbytes: int, space: dict) -> None:
    """call(blocks) runs the kernel with one fixed launch; timed under a CUDA graph, as decode runs."""
    rows = []
    for config in itertools.product(*space.values()):
        blocks = dict(zip(space, config))
        try:
            call(blocks)  # compile outside the graph
            ms = triton.testing.do_bench_cudagraph(lambda: call(blocks), rep=50)
        except Exception as err:  # out of registers or shared memory, say
            print(f"    {blocks} failed: {type(err).__name__}")
            continue
        rows.append((ms, blocks))
    rows.sort(key=lambda r: r[0])
    for ms, blocks in rows[:4]:
        print(f"  {name}: {1e3 * ms:7.1f} us  {nbytes / ms / 1e9:5.2f} TB/s  {blocks}")


def main_gemv(m: int, schemes: tuple[str, ...] = ("w4", "w8")) -> None:
    for shape, (n, k) in SHAPES.items():
        x = shape_header(shape, n, k, m)
        if "w4" in schemes:
            args, nbytes = w4_args(m, n, k)
            q, s, z = args[1], args[2], args[3]
            # SPLIT_K None: the split w4a16_gemv gives those tiles; a short N also tries others.
            space = {"BLOCK_N": [16, 32, 64], "BLOCK_W": [16, 32, 64], "num_warps": [4], "SPLIT_K": [None],
                     "NUM_STAGES": [1, 2, 3, 4]}
            if n <= 8192:
                space.update(BLOCK_N=[16, 32, 64], BLOCK_W=[16, 32], SPLIT_K=[None, 2, 4], NUM_STAGES=[1, 2, 3])
            time_call("w4a16 GEMM", lambda: w4a16_matmul(x, q, s, z, GROUP, split_k=None), nbytes)
            time_call("w4a16 GEMV default", lambda: w4a16_gemv(x, q, s, z, GROUP), nbytes)
            sweep_gemv("w4a16 GEMV", lambda b: w4a16_gemv(x, q, s, z, GROUP, blocks=b), nbytes, space)
        if "w8" in schemes:
            args, nbytes = w8_args(m, n, k)
            q, s = args[1], args[2]
            space = {"BLOCK_N": [4, 8, 16], "BLOCK_K": [1024, 2048], "num_warps": [4, 8], "NUM_STAGES": [1, 2, 3, 4]}
            time_call("w8a16 GEMM", lambda: w8a16_matmul(x, q, s), nbytes)
            time_call("w8a16 GEMV autotuned", lambda: w8a16_gemv(x, q, s), nbytes)
            sweep_gemv("w8a16 GEMV", lambda b: w8a16_gemv(x, q, s, blocks=b), nbytes, space)


def prefill_space(m: int, **fixed) -> dict:
    """Tiles worth trying at M rows (the H100 sweep's neighbourhood of each size's best)."""
    if m <= 16:
        space = {"BLOCK_M": [16], "BLOCK_N": [32, 64, 128], "BLOCK_K": [128], "num_warps": [4], "num_stages": [4]}
    elif m <= 64:
        space = {"BLOCK_M": [32, 64], "BLOCK_N": [64, 128], "BLOCK_K": [128], "num_warps": [4], "num_stages": [3, 4]}
    elif m <= 256:
        space = {"BLOCK_M": [64, 128], "BLOCK_N": [64, 128], "BLOCK_K": [64, 128], "num_warps": [4, 8], "num_stages": [3]}
    else:
        space = {"BLOCK_M": [128, 256], "BLOCK_N": [128], "BLOCK_K": [64], "num_warps": [8], "num_stages": [3, 4]}
    return {**space, **{key: [value] for key, value in fixed.items()}}


def main_prefill(ms: list[int], wrappers_only: bool = False) -> None:
    """The weight-only GEMMs at prefill sizes: autotuned, as the engine calls them, then the best
    launches of each operand layout (x @ w.T, or w @ x.T with the weights as the register operand)."""
    for m in ms:
        for shape, (n, k) in SHAPES.items():
            if shape == "lm_head":  # prefill projects only the last token
                continue
            x = shape_header(shape, n, k, m)
            args, nbytes = w8_args(m, n, k)
            q, s = args[1], args[2]
            time_call("w8a16 autotuned", lambda: w8a16_matmul(x, q, s), nbytes)
            for swap in () if wrappers_only else (False, True):
                sweep_gemv(f"w8a16 SWAP_AB={swap}", lambda b: w8a16_matmul(x, q, s, blocks=b), nbytes,
                           prefill_space(m, SWAP_AB=swap))
            args, nbytes = w4_args(m, n, k)
            q, s, z = args[1], args[2], args[3]
            time_call("w4a16 autotuned", lambda: w4a16_matmul(x, q, s, z, GROUP), nbytes)
            for swap, scaled in () if wrappers_only else ((False, False), (True, False), (True, True)):
                sweep_gemv(f"w4a16 SWAP_AB={swap} SCALE_WEIGHTS={scaled}",
                           lambda b: w4a16_matmul(x, q, s, z, GROUP, split_k=1, blocks=b), nbytes,
                           prefill_space(m, SWAP_AB=swap, SCALE_WEIGHTS=scaled))


def main_dense(m: int) -> None:
    """The dense bf16 GEMV (engine/layers/triton/gemv.py) against cuBLAS on the 7B shapes."""
    from engine.layers.triton.gemv import gemv

    for shape, (n, k) in SHAPES.items():
        x = shape_header(shape, n, k, m)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        nbytes = w.numel() * 2
        time_call("dense GEMV default", lambda: gemv(x, w), nbytes)
        space = {"BLOCK_N": [4, 8, 16], "BLOCK_K": [512, 1024], "num_warps": [4, 8], "SPLIT_K": [None],
                 "NUM_STAGES": [1, 2, 3]}
        if n <= 8192:
            space.update(num_warps=[4], SPLIT_K=[None, 2, 4], NUM_STAGES=[1, 3])
        sweep_gemv("dense GEMV", lambda b: gemv(x, w, blocks=b), nbytes, space)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", default="1", help="rows of x (with --prefill, a comma-separated list)")
    parser.add_argument("--wrappers-only", action="store_true",
                        help="only the wrappers as the engine calls them (split-K included), under a CUDA graph")
    parser.add_argument("--gemv", action="store_true", help="sweep the decode GEMVs (M <= 4) instead")
    parser.add_argument("--schemes", default="w4,w8", help="with --gemv: which GEMVs (w4, w8)")
    parser.add_argument("--dense", action="store_true", help="the dense bf16 GEMV against cuBLAS instead")
    parser.add_argument("--prefill", action="store_true", help="the GEMMs at prefill sizes, each operand layout")
    parser.add_argument("--pdl", action="store_true",
                        help="launch with PDL, as decode does: back-to-back calls then overlap, so the times are no "
                             "longer one kernel's (default: off)")
    opts = parser.parse_args()
    set_programmatic_launch(opts.pdl)
    if opts.prefill:
        return main_prefill([int(v) for v in opts.m.split(",")], opts.wrappers_only)
    m = int(opts.m)
    if opts.dense:
        return main_dense(m)
    if opts.gemv:
        return main_gemv(m, tuple(opts.schemes.split(",")))
    w4_space = {"bn": [16, 32, 64], "bk": [64, 128], "warps": [4], "stages": [4, 6, 8, 12]}
    w8_space = {"bn": [16, 32, 64], "bk": [256, 512], "warps": [4], "stages": [3, 5, 8]}
    for shape, (n, k) in SHAPES.items():
        x = shape_header(shape, n, k, m)
        args, nbytes = w4_args(m, n, k)
        q, s, z = args[1], args[2], args[3]
        time_call("w4a16 wrapper", lambda: w4a16_matmul(x, q, s, z, GROUP), nbytes)
        if not opts.wrappers_only:
            sweep("w4a16", _w4a16_kernel, args, n, nbytes, w4_space)
        args, nbytes = w8_args(m, n, k)
        time_call("w8a16 wrapper", lambda: w8a16_matmul(*args[:3]), nbytes)
        if not opts.wrappers_only:
            sweep("w8a16", _w8a16_kernel, args, n, nbytes, w8_space)


if __name__ == "__main__":
    main()
