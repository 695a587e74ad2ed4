"""Time the Triton paged-attention kernel over its launch configurations on the shapes that matter
(7B decode batches, long prefills), and print each shape's best; engine/layers/attention/triton/
paged_attention.py's LAUNCH table holds the chosen ones.

    python bench/attention_sweep.py            # CUDA only
    python bench/attention_sweep.py --fp8      # decode over an fp8 (e4m3) cache instead
    python bench/attention_sweep.py --split    # small decode batches: split-KV against none
    python bench/attention_sweep.py --small    # batch 1: the split path's launch candidates, in a graph
    python bench/attention_sweep.py --grid     # unsplit decode: both kernels' launches on the throughput shapes
    python bench/attention_sweep.py --prefill  # whole prompts: bf16 and fp8 caches against flash SDPA

--split times whole decode launches (split and merge kernels together) in a CUDA graph, as the engine
replays them, since at batch 1 launch gaps are a fair part of the few microseconds at stake; it prints
the latency of no split (1), of paged_attention's own choice (auto) and of a few forced split counts.

Bytes counted per decode launch: every sequence's K and V once (the floor: decode attention only streams
the cache). Median of triton.testing.do_bench's timed repetitions.
"""
from __future__ import annotations

import argparse
import itertools

import torch
import triton

from engine.layers.attention.triton import paged_attention as pa

BLOCK_SIZE = 16


def make_pool(seqs: list[tuple[int, int]], kv_heads: int, head_dim: int, cache_dtype: torch.dtype,
              block_size: int, head_major: bool, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random KV pool ([2, blocks, block_size, kv_heads, head_dim], through strides when head_major: each
    block holds a KV head's slots together, [block, kv_head, slot, dim] in memory) holding every sequence's
    context (the second of each (query tokens, context)), and the block tables [seqs, most blocks] that
    hand its blocks out in a shuffled order."""
    blocks = [-(-ctx // block_size) for _, ctx in seqs]
    num_blocks = sum(blocks)
    dims = (2, num_blocks, kv_heads, block_size, head_dim) if head_major else (2, num_blocks, block_size, kv_heads, head_dim)
    cache = torch.randn(*dims, device="cuda", dtype=torch.bfloat16, generator=gen).to(cache_dtype)
    if head_major:
        cache = cache.transpose(2, 3)
    order = torch.randperm(num_blocks, device="cuda", generator=gen).int()
    tables = torch.zeros(len(seqs), max(blocks), dtype=torch.int32, device="cuda")
    first = 0
    for i, n in enumerate(blocks):
        tables[i, :n] = order[first:first + n]
        first += n
    return cache, tables


def make_step(seqs: list[tuple[int, int]], heads: int, kv_heads: int, head_dim: int = 128,
              cache_dtype: torch.dtype = torch.bfloat16, block_size: int = BLOCK_SIZE,
              head_major: bool = False) -> tuple:
    """paged_attention's positional operands for sequences of (query tokens, context) each, their blocks
    in a shuffled pool (make_pool)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    cache, tables = make_pool(seqs, kv_heads, head_dim, cache_dtype, block_size, head_major, gen)
    q = torch.randn(sum(n for n, _ in seqs), heads, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    context_lens = torch.tensor([ctx for _, ctx in seqs], dtype=torch.int32, device="cuda")
    query_start = torch.tensor([0] + [n for n, _ in seqs], device="cuda").cumsum(0).int()
    return q, cache[0], cache[1], tables, context_lens, query_start, max(n for n, _ in seqs), head_dim ** -0.5


def make_batch(seqs: int, ctx: int, q_len: int, heads: int, kv_heads: int, head_dim: int = 128,
               cache_dtype: torch.dtype = torch.bfloat16, block_size: int = BLOCK_SIZE, head_major: bool = False):
    """`seqs` sequences of q_len queries over ctx tokens each (make_step), and the bytes of K and V they read."""
    args = make_step([(q_len, ctx)] * seqs, heads, kv_heads, head_dim, cache_dtype, block_size, head_major)
    kv_bytes = 2 * seqs * ctx * kv_heads * head_dim * args[1].element_size()
    return args, kv_bytes


def sweep(kind: str, label: str, args: tuple, kv_bytes: int, grid: dict[str, list[int]]) -> None:
    default = pa.LAUNCH[kind]
    rows = []
    for values in itertools.product(*grid.values()):
        config = pa.LaunchConfig(**dict(zip(grid, values)))
        pa.LAUNCH[kind] = config
        try:
            ms = triton.testing.do_bench(lambda: pa.paged_attention(*args), warmup=20, rep=100, return_mode="median")
        except Exception as err:  # e.g. out of shared memory
            print(f"  {config}: failed ({type(err).__name__})")
            continue
        rows.append((ms, config))
    pa.LAUNCH[kind] = default
    rows.sort(key=lambda r: r[0])
    base = next((ms for ms, c in rows if c == default), float("nan"))
    print(f"\n{label}: default {default} {1e3 * base:.1f} us ({kv_bytes / base / 1e9:.2f} TB/s)")
    for ms, config in rows[:5]:
        print(f"  {1e3 * ms:8.1f} us  {kv_bytes / ms / 1e9:5.2f} TB/s  {config}")


def split_sweep() -> None:
    print(torch.cuda.get_device_name())
    for heads, kv_heads in [(32, 32), (32, 8)]:
        for seqs in (1, 2, 4):
            for ctx in (128, 512, 2048):
                args, _ = make_batch(seqs, ctx, 1, heads, kv_heads)
                out = torch.empty_like(args[0])
                auto = pa.decode_splits(seqs, kv_heads, pa.multiprocessors(out.device))
                for label, splits in [("1", 1), (f"auto={auto}", None), ("2", 2), ("4", 4), ("8", 8), ("16", 16)]:
                    ms = triton.testing.do_bench_cudagraph(
                        lambda splits=splits: pa.paged_attention(*args, out=out, num_splits=splits), rep=100,
                        return_mode="median")
                    print(f"decode {seqs} seqs, {heads}/{kv_heads} heads  ctx {ctx:5d}  splits {label:>7}  "
                          f"{1e3 * ms:7.1f} us")


def small_sweep() -> None:
    """Batch-1 decode over the contexts of the latency cases: the split path's launch candidates
    (block_n, num_warps, num_stages, MIN_TILES_PER_SPLIT), the split count paged_attention picks, whole
    launches in a CUDA graph with PDL on, as decode replays them."""
    from engine.layers.attention.triton import paged_attention_split as pas

    print(torch.cuda.get_device_name())
    default, min_tiles = pa.LAUNCH["decode_split"], pas.MIN_TILES_PER_SPLIT
    candidates = [(default.block_n, default.num_warps, default.num_stages, min_tiles),
                  (64, 8, 1, 1), (64, 4, 1, 1), (128, 4, 1, 1), (128, 8, 1, 1), (64, 4, 3, 1), (128, 4, 2, 1)]
    print("candidates (block_n, num_warps, num_stages, min tiles per split):", candidates, "(the first: now)")
    for heads, kv_heads in [(32, 32), (32, 8)]:
        for ctx in (64, 96, 128, 160, 192, 256, 384, 512, 1024, 2048):
            args, _ = make_batch(1, ctx, 1, heads, kv_heads)
            out = torch.empty_like(args[0])
            times = []
            for block_n, warps, stages, tiles in candidates:
                pa.LAUNCH["decode_split"] = pa.LaunchConfig(block_m=16, block_n=block_n, num_warps=warps,
                                                            num_stages=stages)
                pas.MIN_TILES_PER_SPLIT = tiles
                ms = triton.testing.do_bench_cudagraph(lambda: pa.paged_attention(*args, out=out), rep=50,
                                                       return_mode="median")
                times.append(f"{1e3 * ms:5.1f}")
            print(f"decode 1 seq, {heads}/{kv_heads} heads, ctx {ctx:4d}: " + " ".join(times) + " us")
    pa.LAUNCH["decode_split"], pas.MIN_TILES_PER_SPLIT = default, min_tiles


# Unsplit decode batches of the throughput cases: (sequences, context) at 128/128 (contexts 128..256 over
# the run), at 128/2048 and 2048/128 (one wave of 112 on an H100's fp8 pool; ~1100 and ~2100 tokens).
GRID_SHAPES = {"fp8": [(512, 128), (512, 192), (512, 256), (256, 192), (112, 1100), (112, 2112)],
               "bf16": [(256, 128), (256, 192), (256, 256), (128, 192), (64, 1100), (64, 2112)]}


# Unsplit decode kernels (paged_attention.DECODE_KERNEL) -> the launches tried: the best of each one's full
# (block_n, num_warps, num_stages) grid on an H200 in session 14, besides its default.
KERNEL_LAUNCHES = {
    "queries": [(64, 2, 2), (32, 2, 2), (128, 2, 1), (64, 4, 2), (64, 4, 3)],
    "keys": [(64, 2, 4), (64, 2, 3), (64, 2, 2), (128, 4, 1), (64, 4, 2), (128, 2, 3), (128, 4, 2)],
}


def grid_sweep(block_size: int = BLOCK_SIZE, head_major: bool = False,
               caches: tuple[str, ...] = ("fp8", "bf16")) -> None:
    """The unsplit decode kernels (paged_attention.DECODE_KERNEL: the queries or the keys as the dot's rows)
    over their launches (block_n, num_warps, num_stages) on every throughput shape, as a matrix:
    a captured decode graph keeps one launch while its contexts grow, so the launch to take is the one
    that is never far from each shape's best, not the best of one shape."""
    print(torch.cuda.get_device_name(), f"block size {block_size},", "head-major" if head_major else "slot-major",
          "cache layout")
    kernels = dict(pa.DECODE_KERNEL)
    for cache, shapes in GRID_SHAPES.items():
        if cache not in caches:
            continue
        dtype = torch.float8_e4m3fn if cache == "fp8" else torch.bfloat16
        key, suffix = ("fp8", "_fp8") if cache == "fp8" else ("model_dtype", "")
        batches = [make_batch(seqs, ctx, 1, 32, 32, cache_dtype=dtype, block_size=block_size, head_major=head_major)
                   for seqs, ctx in shapes]
        table: dict[tuple[str, pa.LaunchConfig], list[float]] = {}
        defaults = {}
        for kernel, tried in KERNEL_LAUNCHES.items():
            pa.DECODE_KERNEL[key] = kernel
            kind = {"queries": "decode", "keys": "decode_rows"}[kernel] + suffix
            defaults[kernel] = default = pa.LAUNCH[kind]
            launches = [pa.LaunchConfig(block_m=16, block_n=n, num_warps=w, num_stages=s) for n, w, s in tried]
            for launch in dict.fromkeys([default] + launches):
                pa.LAUNCH[kind] = launch
                try:
                    table[kernel, launch] = [
                        triton.testing.do_bench(lambda args=args: pa.paged_attention(*args, num_splits=1),
                                                warmup=10, rep=40, return_mode="median") for args, _ in batches]
                except Exception as err:  # out of shared memory, say
                    print(f"  {kernel} {launch}: failed ({type(err).__name__})")
            pa.LAUNCH[kind] = default
        pa.DECODE_KERNEL.update(kernels)
        best = [min(times[i] for times in table.values()) for i in range(len(shapes))]
        print(f"\n{cache} cache, 32/32 heads; us per launch (TB/s) for (seqs, ctx) = {shapes}; worst ratio to each "
              f"shape's best; now taken: {kernels[key]}")
        ranked = sorted(table.items(), key=lambda kv: max(t / b for t, b in zip(kv[1], best)))
        for (kernel, launch), times in ranked:
            cells = " ".join(f"{1e3 * t:7.1f} ({nbytes / t / 1e9:4.2f})" for t, (_, nbytes) in zip(times, batches))
            mark = " <- default" if launch == defaults[kernel] else ""
            print(f"  {kernel:7s} n={launch.block_n:3d} w={launch.num_warps} s={launch.num_stages}: {cells}  "
                  f"worst x{max(t / b for t, b in zip(times, best)):.2f}{mark}")


PREFILL_SHAPES = [(4, 2048), (64, 128)]  # one 8,192-token step of the 2048/128 and 128/128 runs


def prefill_sweep() -> None:
    """Whole-prompt prefill steps (no cached prefix) over a cache in the model's dtype and an fp8 one, each
    over the prefill launch grid, against torch's flash SDPA on the same q, k, v as the attainable rate.
    TFLOP/s counts the causal half: 2 dots of 2 * q_len^2 / 2 * head_dim per head."""
    print(torch.cuda.get_device_name())
    grid = {"block_m": [64, 128], "block_n": [32, 64, 128], "num_warps": [4, 8], "num_stages": [2, 3, 4]}
    for seqs, q_len in PREFILL_SHAPES:
        flops = 2 * 2 * seqs * 32 * q_len * q_len / 2 * 128
        q = torch.randn(seqs, 32, q_len, 128, device="cuda", dtype=torch.bfloat16)
        ms = triton.testing.do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(
            q, q, q, is_causal=True), warmup=20, rep=100, return_mode="median")
        print(f"\nprefill {seqs} x {q_len}: flash SDPA {1e3 * ms:.1f} us, {flops / ms / 1e9:.0f} TFLOP/s")
        for dtype in (torch.bfloat16, torch.float8_e4m3fn):
            args, _ = make_batch(seqs, q_len, q_len, 32, 32, cache_dtype=dtype, head_major=True)
            kind = "prefill_fp8" if dtype == torch.float8_e4m3fn else "prefill"
            sweep(kind, f"prefill {seqs} x {q_len}, {dtype} cache ('TB/s' column: TFLOP/s)", args,
                  int(flops), grid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp8", action="store_true", help="decode batches over an fp8 cache (and their bf16 twins)")
    parser.add_argument("--split", action="store_true", help="small decode batches, split-KV against none")
    parser.add_argument("--small", action="store_true", help="batch-1 decode: the split path's launch candidates")
    parser.add_argument("--grid", action="store_true", help="unsplit decode: both kernels' launches on the throughput shapes")
    parser.add_argument("--block-size", type=int, default=BLOCK_SIZE, help="--grid: tokens per KV block")
    parser.add_argument("--head-major", action="store_true",
                        help="--grid: blocks hold each KV head's slots together (see make_batch)")
    parser.add_argument("--cache", choices=("fp8", "bf16"), help="--grid: only this cache's shapes")
    parser.add_argument("--prefill", action="store_true", help="whole-prompt prefill: bf16 / fp8 caches vs flash SDPA")
    options = parser.parse_args()
    if options.prefill:
        prefill_sweep()
        return
    if options.grid:
        grid_sweep(options.block_size, options.head_major, (options.cache,) if options.cache else ("fp8", "bf16"))
        return
    if options.small:
        small_sweep()
        return
    if options.split:
        split_sweep()
        return
    fp8 = options.fp8
    decode_grid = {"block_m": [16], "block_n": [32, 64, 128], "num_warps": [2, 4, 8], "num_stages": [2, 3, 4]}
    prefill_grid = {"block_m": [64, 128], "block_n": [32, 64, 128], "num_warps": [4, 8], "num_stages": [2, 3]}
    if fp8:  # 128/2048 at one wave: as many sequences as each pool holds, ~1100 tokens of context on average
        for seqs, dtype in [(96, torch.bfloat16), (192, torch.float8_e4m3fn), (96, torch.float8_e4m3fn)]:
            args, kv_bytes = make_batch(seqs, 1100, 1, 32, 32, cache_dtype=dtype)
            kind = "decode_fp8" if dtype == torch.float8_e4m3fn else "decode"
            sweep(kind, f"decode {seqs} seqs x 1100 ctx, 32/32 heads, {dtype} cache", args, kv_bytes,
                  {"block_m": [16], "block_n": [64, 128, 256], "num_warps": [2, 4], "num_stages": [3, 4]})
        return
    for seqs, ctx, heads, kv_heads in [(256, 192, 32, 32), (64, 1100, 32, 32), (1, 178, 32, 32), (256, 192, 32, 8)]:
        args, kv_bytes = make_batch(seqs, ctx, 1, heads, kv_heads)
        sweep("decode", f"decode {seqs} seqs x {ctx} ctx, {heads}/{kv_heads} heads", args, kv_bytes, decode_grid)
    for seqs, q_len in [(1, 2048), (64, 128)]:
        args, kv_bytes = make_batch(seqs, q_len, q_len, 32, 32)
        sweep("prefill", f"prefill {seqs} seqs x {q_len} tokens", args, kv_bytes, prefill_grid)


if __name__ == "__main__":
    main()
