"""How far ahead of static batching in-flight batching can be on a mixed-lengths workload, counting decode
steps only: static runs each batch of max_batch_size requests until its longest member finishes; in-flight
refills a slot the step after it frees (prefills free, no step cost differences). The same draws as
`inferline bench --workload mixed` (inferline.cli.bench_mixed.draw_output_lens), so its measured ratio can be
read against this bound:

    python bench/mixed_bound.py --requests 256 --output-len-range 16,512 --dist uniform --max-batch-size 64
"""
from __future__ import annotations

import argparse
import statistics

from inferline.cli.bench_mixed import OUTPUT_LEN_DISTS, draw_output_lens, parse_output_len_range


def static_steps(lens: list[int], batch: int) -> int:
    return sum(max(lens[i:i + batch]) for i in range(0, len(lens), batch))


def inflight_steps(lens: list[int], batch: int) -> int:
    """Steps until every request has its tokens, a freed slot taken by the next request in order."""
    queue, running, steps = list(reversed(lens)), [], 0
    while queue or running:
        while queue and len(running) < batch:
            running.append(queue.pop())
        steps += 1
        running = [left - 1 for left in running if left > 1]
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--output-len-range", default="16,512")
    parser.add_argument("--dist", choices=OUTPUT_LEN_DISTS, default="uniform")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 (the bench's default seed is 0)")
    args = parser.parse_args()
    lo, hi = parse_output_len_range(args.output_len_range)
    ratios = []
    for seed in range(args.seeds):
        lens = draw_output_lens(args.requests, lo, hi, seed, args.dist)
        s, f = static_steps(lens, args.max_batch_size), inflight_steps(lens, args.max_batch_size)
        ratios.append(s / f)
        print(f"seed {seed}: mean output {statistics.mean(lens):.0f} tokens, static {s} steps, "
              f"in-flight {f} steps, ratio {s / f:.2f}x")
    print(f"median ratio over {args.seeds} seed(s): {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
