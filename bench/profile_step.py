"""Where one engine step's time goes: host (Python) vs GPU, per phase, for a prefill and for decodes.

    python bench/profile_step.py --model /tmp/b7 --batch-size 1 --input-len 128 [--device cuda] [--pdl off]
        [--replay-only]

Prints the wall time of engine.step() for the prefill and the median decode step, the GPU time of a
bare decode-graph replay (CUDA), and the profiler's top operators of one prefill and one decode step.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from engine import Engine, EngineConfig, SamplingParams
from engine.layers.triton.pdl import set_programmatic_launch


def decode_replay_ms(engine: Engine, batch_size: int) -> tuple[int, float]:
    """(bucket, median GPU time in ms) of the captured decode graph serving batch_size, replayed by itself
    with the inputs its last step left (CUDA)."""
    bucket, graph = engine.runner.graphs.decode_graph(batch_size)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(20):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return bucket, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--kv-cache-dtype", default="auto", help="auto (the model's dtype) or fp8")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--pdl", choices=("on", "off"), default="on",
                        help="programmatic dependent launch between the step's Triton kernels (Hopper+)")
    parser.add_argument("--replay-only", action="store_true", help="skip the profiler's tables")
    args = parser.parse_args()
    set_programmatic_launch(args.pdl == "on")
    cuda = args.device.startswith("cuda")
    engine = Engine(EngineConfig(model=args.model, device=args.device, dtype=args.dtype, max_batch_size=args.batch_size,
                                 max_seq_len=args.input_len + args.decode_steps + 8,
                                 kv_cache_dtype=args.kv_cache_dtype))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    vocab = engine.model_config.vocab_size
    params = SamplingParams(max_tokens=args.decode_steps, min_tokens=args.decode_steps, detokenize=False)

    def add_batch(tag: str) -> None:
        gen = torch.Generator().manual_seed(0)
        for i in range(args.batch_size):
            engine.add_request(f"{tag}-{i}", torch.randint(100, vocab - 100, (args.input_len,), generator=gen).tolist(), params)

    def timed_step() -> float:
        sync()
        start = time.perf_counter()
        engine.step()
        sync()
        return time.perf_counter() - start

    for round_ in range(2):  # the first round compiles and warms everything
        add_batch(f"r{round_}")
        prefill = timed_step()
        decodes = [timed_step() for _ in range(args.decode_steps - 1)]
        while engine.has_unfinished():
            engine.step()
    print(f"prefill step {1e3 * prefill:.2f} ms; decode step median {1e3 * statistics.median(decodes):.2f} ms "
          f"(batch {args.batch_size}, {args.input_len} prompt tokens)")
    if engine.runner.graphs is not None:
        bs, replay = decode_replay_ms(engine, args.batch_size)
        print(f"decode graph replay alone (GPU, batch bucket {bs}, PDL {args.pdl}): {replay:.3f} ms")
    if args.replay_only:
        return

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    add_batch("prof")
    with profile(activities=activities) as prof_prefill:
        timed_step()
    with profile(activities=activities) as prof_decode:
        timed_step()
    sort = "cuda_time_total" if cuda else "cpu_time_total"
    for name, prof in (("prefill", prof_prefill), ("decode", prof_decode)):
        print(f"\n== {name}: by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
        if cuda:
            print(f"\n== {name}: by GPU time")
            print(prof.key_averages().table(sort_by=sort, row_limit=args.top))


if __name__ == "__main__":
    main()
