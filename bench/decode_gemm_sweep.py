"""Experiment, not used by the engine: a Triton tensor-core GEMM for dense decode batches (8-128 rows)
against cuBLAS on a 7B layer's shapes, as the engine would run it: inside a CUDA graph, each call on its
own copy of the weights (one copy would leave a 33 MB o_proj in the 50 MB L2).

    python bench/decode_gemm_sweep.py [--m 64,48,16,128,32] [--shape baichuan2-7b] [--blas-only]

Why: at 2048/128 a bf16 decode step of ~48 sequences spends ~5.4 ms in cuBLAS streaming 14 GB of
weights, ~2.5 TB/s of an H100's ~3.3 (bench/throughput_profile.py). The kernel below reads each weight
row tile once, the weights as the dot's first operand (y.T = w @ x.T), K split in the same launch where
row tiles are few (split_k.py), gate_up optionally ending in silu(gate) * up, as the decode GEMV does.
Result (H200, docs/benchmarks.md session 20): cuBLAS as fast or up to 2x faster on every layer but the lm_head,
so the engine keeps cuBLAS above the GEMV's 4 rows. Prints per batch size each layer's time through torch's
two BLAS backends, cuBLAS and cuBLASLt (gate_up: then silu_and_mul), and the best candidate launch's, and a
step's sums. CUDA only.
"""
from __future__ import annotations

import argparse
import collections
import statistics

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from engine.layers.triton.activation import gated_rows, output_tiles, silu_and_mul
from engine.layers.triton.pdl import pdl_launch, wait_for_previous
from engine.layers.triton.split_k import split_buffers, split_for, store_or_reduce

SHAPES = {  # name -> (N, K, gated): one layer of the model, and its lm_head
    "baichuan2-7b": {"qkv": (12288, 4096, False), "o_proj": (4096, 4096, False), "gate_up": (22016, 4096, True),
                     "down": (4096, 11008, False), "lm_head": (125696, 4096, False)},
    "llama3-8b": {"qkv": (6144, 4096, False), "o_proj": (4096, 4096, False), "gate_up": (28672, 4096, True),
                  "down": (4096, 14336, False), "lm_head": (128256, 4096, False)},
}
# (BLOCK_N, BLOCK_K, num_warps, NUM_STAGES)
CANDIDATES = [(128, 128, 4, 4), (64, 128, 4, 4), (64, 128, 4, 3), (64, 128, 4, 5), (128, 128, 4, 3),
              (128, 64, 4, 4), (128, 64, 4, 6), (64, 256, 4, 2), (64, 256, 4, 3), (128, 256, 8, 2),
              (128, 256, 8, 3), (64, 64, 4, 6)]
L2_BYTES = 200 << 20  # weight copies per graph: enough that none is still in L2 when read again


@triton.jit
def _decode_gemm_kernel(x_ptr, w_ptr, y_ptr, part_ptr, count_ptr, M, N, stride_xm, stride_wn, stride_ym,
                        K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        SPLIT_K: tl.constexpr, GATED: tl.constexpr, USE_PDL: tl.constexpr,
                        NUM_STAGES: tl.constexpr):
    # x: [M, K]; w: [N, K]; y: [M, N], or [M, N / 2] GATED
    TILES_PER_SPLIT: tl.constexpr = ((K + BLOCK_K - 1) // BLOCK_K + SPLIT_K - 1) // SPLIT_K
    k_begin = tl.program_id(1) * (TILES_PER_SPLIT * BLOCK_K)
    offs_n, n_ok = gated_rows(N, BLOCK_N, GATED)
    offs_m = tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    offs_k = k_begin + tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]  # [BLOCK_N, BLOCK_K]
    x_ptrs = x_ptr + offs_m[None, :] * stride_xm + offs_k[:, None]  # [BLOCK_K, BLOCK_M]: x transposed
    wait_for_previous(USE_PDL)
    acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # y.T
    for t in tl.range(TILES_PER_SPLIT, num_stages=NUM_STAGES):
        k_ok = offs_k + t * BLOCK_K < K
        w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        x_t = tl.load(x_ptrs, mask=k_ok[:, None] & m_ok[None, :], other=0.0)
        acc_t = tl.dot(w, x_t, acc_t)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    store_or_reduce(tl.trans(acc_t), y_ptr, part_ptr, count_ptr, M, N, stride_ym, offs_m, offs_n,
                    m_ok[:, None] & n_ok[None, :], SPLIT_K, GATED)


def decode_gemm(x: torch.Tensor, w: torch.Tensor, launch: tuple[int, int, int, int], gated: bool) -> torch.Tensor:
    """x: [M <= 128, K] bf16, w: [N, K] bf16 -> x @ w.T ([M, N]; gated: silu(gate) * up, [M, N / 2])."""
    (m, k), n = x.shape, w.shape[0]
    block_n, block_k, warps, stages = launch
    y = torch.empty((m, n // 2 if gated else n), dtype=x.dtype, device=x.device)
    n_tiles = output_tiles(n, block_n, gated)
    split = split_for(n_tiles, triton.cdiv(k, block_k), x.device)
    part, counters = split_buffers(split, m, n, y)
    _decode_gemm_kernel[(n_tiles, split)](x, w, y, part, counters, m, n, x.stride(0), w.stride(0), y.stride(0), k,
                                          max(16, triton.next_power_of_2(m)), block_n, block_k, SPLIT_K=split,
                                          GATED=gated, NUM_STAGES=stages, num_warps=warps, **pdl_launch(x.device))
    return y


def graph_time(fn, copies: int, replays: int = 15) -> float:
    """Median microseconds of one fn(i) call, from a graph of fn(0..copies-1) replayed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(copies):  # warm-up: compiles, split-K counters, the allocator's pools
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(copies):
            fn(i)
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / copies)
    return statistics.median(times)


def blas_time(x: torch.Tensor, ws: list[torch.Tensor], gated: bool, library: str) -> float:
    """torch's F.linear (then silu_and_mul where gated) through one BLAS backend: "cublas" (torch's default on
    CUDA) or "cublaslt" (torch.backends.cuda.preferred_blas_library), whose heuristics may pick other kernels."""
    previous = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(library)
    try:
        return graph_time((lambda i: silu_and_mul(F.linear(x, ws[i]))) if gated else (lambda i: F.linear(x, ws[i])),
                          len(ws))
    finally:
        torch.backends.cuda.preferred_blas_library(previous)


def best_launch(x: torch.Tensor, ws: list[torch.Tensor], gated: bool, ref: torch.Tensor, label: str):
    """The fastest candidate launch of the Triton kernel: (us, launch, max |error| against ref)."""
    rows = []
    for launch in CANDIDATES:
        try:
            err = (decode_gemm(x, ws[0], launch, gated).float() - ref.float()).abs().max().item()
            us = graph_time(lambda i, c=launch: decode_gemm(x, ws[i], c, gated), len(ws))
        except triton.runtime.errors.OutOfResources as exc:  # too little shared memory for the tiles
            print(f"  {label} {launch}: failed ({exc})"[:160])
            continue
        rows.append((us, launch, err))
    return min(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", default="64,48,16,128,32")
    parser.add_argument("--shape", default="baichuan2-7b", choices=sorted(SHAPES))
    parser.add_argument("--blas-only", action="store_true", help="cuBLAS against cuBLASLt only, no Triton kernel")
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__)
    for m in (int(v) for v in args.m.split(",")):
        sums = collections.Counter()
        for name, (n, k, gated) in SHAPES[args.shape].items():
            copies = max(2, -(-L2_BYTES // (n * k * 2)))
            ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = silu_and_mul(F.linear(x, ws[0])) if gated else F.linear(x, ws[0])
            tb = n * k * 2 / 1e6
            times = {library: blas_time(x, ws, gated, library) for library in ("cublas", "cublaslt")}
            line = f"M={m:3d} {name:8s} " + "  ".join(f"{lib} {us:7.1f} us ({tb / us:4.2f} TB/s)" for lib, us in times.items())
            if not args.blas_only:
                times["triton"], launch, err = best_launch(x, ws, gated, ref, f"M={m} {name}")
                line += f"  Triton best {times['triton']:7.1f} ({tb / times['triton']:4.2f}) {launch} max|err| {err:.3g}"
            print(line)
            for key, us in times.items():
                sums[key] += (1 if name == "lm_head" else 32) * us
            del ws
        print(f"M={m:3d} 32 layers + lm_head: " + ", ".join(f"{key} {us / 1e3:.3f} ms" for key, us in sums.items()))


if __name__ == "__main__":
    main()
