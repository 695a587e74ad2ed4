"""The GPU timeline of steady batch-1 decode steps as `inferline bench` drives them (async scheduling, no
syncs): per step, how long the captured graph's kernels ran, what ran outside the graph (input copies,
sampling, the copy of the token to the host), and how long the GPU sat idle.

    python bench/step_timeline.py --model /tmp/b7-int8_wo [--input-len 128] [--steps 24] [--trace out.json]

A decode step's wall time is its graph replay plus everything here that is not the graph: that is what
the end-to-end tok/s pays on top of `bench/profile_step.py`'s replay alone. CUDA only.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from engine import Engine, EngineConfig, SamplingParams
from profile_step import decode_replay_ms  # bench/, this script's folder
from throughput_profile import GPU_CATEGORIES, busy_us


def gpu_ops(trace: dict) -> list[dict]:
    """The trace's GPU events in start order, each marked graph=True when a graph launch issued it."""
    events = trace["traceEvents"]
    graph_launches = {e["args"]["correlation"] for e in events
                      if e.get("cat") == "cuda_runtime" and "GraphLaunch" in e.get("name", "")}
    ops = [dict(name=e["name"], ts=float(e["ts"]), dur=float(e["dur"]),
                graph=e.get("args", {}).get("correlation") in graph_launches)
           for e in events if e.get("cat") in GPU_CATEGORIES]
    return sorted(ops, key=lambda op: op["ts"])


def steps(ops: list[dict]) -> list[list[dict]]:
    """Ops cut into steps, each starting at the first op after the previous step's graph kernels."""
    out: list[list[dict]] = [[]]
    for prev, op in zip([None] + ops[:-1], ops):
        if prev is not None and prev["graph"] and not op["graph"]:
            out.append([])
        out[-1].append(op)
    return out[1:-1]  # the first and last are cut by the profiler's window


def summarize(step: list[dict], next_start: float) -> dict:
    graph = [op for op in step if op["graph"]]
    outside = [op for op in step if not op["graph"]]
    busy = busy_us(step)  # graph kernels overlap under PDL: their union
    span = next_start - step[0]["ts"]
    return dict(span_us=span, graph_us=graph[-1]["ts"] + graph[-1]["dur"] - graph[0]["ts"] if graph else 0.0,
                outside_us=sum(op["dur"] for op in outside), idle_us=span - busy,
                outside=[(op["name"][:60], round(op["dur"], 1)) for op in outside])


def profiled_trace(engine: Engine, input_len: int, steps_in_window: int) -> dict:
    """The Chrome trace of steps_in_window steady decode steps of one request, as `inferline bench` runs them."""
    total = steps_in_window + 16
    params = SamplingParams(max_tokens=total, min_tokens=total, detokenize=False)
    prompt = torch.randint(100, engine.model_config.vocab_size - 100, (input_len,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    for round_ in ("warm", "timed"):
        engine.add_request(round_, prompt, params)
        for _ in range(8):  # the prefill and the first decodes, outside the window
            engine.step()
        if round_ == "timed":
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(steps_in_window):
                    engine.step()
                torch.cuda.synchronize()
        while engine.has_unfinished():
            engine.step()
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            return json.load(f)


def autotune_picks() -> list[str]:
    """What the quantized layers' Triton autotuners picked in this process, one line per tuned shape: the
    picks are made anew in every process, from timings that can lie a fraction of a microsecond apart."""
    from engine.layers.quantization.triton import w4a16, w8a16, w8a16_gemv

    lines = []
    for module in (w8a16_gemv, w8a16, w4a16):
        for key, config in sorted(module._autotuned().cache.items(), key=str):
            lines.append(f"{module.__name__.rsplit('.', 1)[-1]} {key[:4]}: {config}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=24, help="decode steps inside the profiler's window")
    parser.add_argument("--trace", help="also write the Chrome trace here")
    args = parser.parse_args()
    engine = Engine(EngineConfig(model=args.model, device="cuda", dtype=args.dtype, max_batch_size=1,
                                 max_seq_len=args.input_len + args.steps + 24))
    trace = profiled_trace(engine, args.input_len, args.steps)
    if args.trace:
        with open(args.trace, "w") as f:
            json.dump(trace, f)
    cut = steps(gpu_ops(trace))
    rows = [summarize(step, nxt[0]["ts"]) for step, nxt in zip(cut, cut[1:])]
    for key in ("span_us", "graph_us", "outside_us", "idle_us"):
        print(f"{key:>10}: median {statistics.median(r[key] for r in rows):8.1f}  "
              f"(min {min(r[key] for r in rows):.1f}, max {max(r[key] for r in rows):.1f}) over {len(rows)} steps")
    bucket, replay = decode_replay_ms(engine, 1)
    print(f"decode graph replay alone (bucket {bucket}): median {1e3 * replay:8.1f} us")
    print(f"GPU ops in the window: {sum(op['graph'] for step in cut for op in step)} from graph launches, "
          f"{sum(not op['graph'] for step in cut for op in step)} outside")
    seen = collections.Counter(name for r in rows for name, _ in r["outside"])
    print("ops outside the graph, per step (median step):")
    for name, dur in rows[len(rows) // 2]["outside"]:
        print(f"  {dur:7.1f} us  {name}  ({seen[name]} such ops over {len(rows)} steps)")
    print("autotuned launches (key: BLOCK_M or M bucket, N, K, ...):")
    for line in autotune_picks():
        print("  " + line)


if __name__ == "__main__":
    main()
