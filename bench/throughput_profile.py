"""Where a throughput run's GPU time goes: N requests of fixed lengths run to completion as `inferline bench`
drives them (async scheduling, every request added at once), profiled whole. Each step is tagged prefill
(some prompt read in it) or decode (every sequence in it decoding: StepTagger), and the GPU time of each kind
of step is split into kernel families (GEMMs, attention, norms, ...), with the GPU's idle time.

    python bench/throughput_profile.py --model /tmp/b7-fp8 --kv-cache-dtype fp8 --requests 512 \
        --input-len 128 --output-len 128 [--max-num-tokens 8192] [--runs 3] [--no-profile] [--trace out.json]

CUDA only. A profiled run is a little slower than a bare one (the profiler's own work on the host).
"""
from __future__ import annotations

import argparse
import bisect
import collections
import json
import os
import re
import statistics
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from engine import Engine, EngineConfig, SamplingParams

# Kernel families by name, first match wins (cuBLAS / CUTLASS GEMMs, then our Triton kernels by function name).
FAMILIES = {
    "gemm (cuBLAS/CUTLASS)": r"gemm|cutlass|xmma|nvjet|sm90_|sm80_|scaled_mm",
    "gemm (Triton w8/w4/dense)": r"_w8a16|_w4a16|_gemv|_gemm",
    "attention": r"attention|attn|flash|fmha|_paged_decode",
    "rope + kv store": r"rope|store_kv|kv_store",
    "rms norm (+residual)": r"rms|norm",
    "fp8 activation quant": r"fp8_quant|quantize",
    "silu-mul": r"silu|gated",
    "sampling": r"argmax|sampl|topk|softmax|penalt",
    "embedding": r"embed",
}
GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def family(op: dict) -> str:
    if op["cat"] != "kernel":
        return op["cat"]
    for name, pattern in FAMILIES.items():
        if re.search(pattern, op["name"], re.IGNORECASE):
            return name
    return "other kernels"


class StepTagger:
    """Tags each step by what the scheduler put in it: "prefill" where any sequence computes more than one
    token (a prompt, a chunk of one, or a preempted sequence's recompute), else "decode" (a step with
    requests waiting for room is a decode step too). Wraps this engine's scheduler.schedule while in use;
    with annotate, a profiler range step:<kind> runs from the schedule to the end of the step, so the
    step's launches fall in it."""

    def __init__(self, engine: Engine, annotate: bool):
        self.engine, self.annotate = engine, annotate
        self.kinds: collections.Counter = collections.Counter()
        self._range = None

    def __enter__(self) -> StepTagger:
        scheduler = self.engine.scheduler
        schedule = scheduler.schedule

        def tagged_schedule():
            out = schedule()
            if out.scheduled:
                kind = "prefill" if any(s.num_tokens > 1 for s in out.scheduled) else "decode"
                self.kinds[kind] += 1
                if self.annotate:
                    self._range = record_function(f"step:{kind}")
                    self._range.__enter__()
            return out

        scheduler.schedule = tagged_schedule  # the instance attribute shadows the method until __exit__
        return self

    def step(self) -> None:
        try:
            self.engine.step()
        finally:
            if self._range is not None:
                self._range.__exit__(None, None, None)
                self._range = None

    def __exit__(self, *exc) -> None:
        del self.engine.scheduler.schedule


def run(engine: Engine, prompts: list[list[int]], params: SamplingParams, annotate: bool) -> dict:
    """One run of every prompt to completion: wall time, and the number of steps of each kind."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add_request(f"{'prof' if annotate else 'warm'}-{i}", prompt, params)
    with StepTagger(engine, annotate) as tagger:
        while engine.has_unfinished():
            tagger.step()
    torch.cuda.synchronize()
    return dict(wall_s=time.perf_counter() - start, steps=tagger.kinds)


def tagged_gpu_ops(trace: dict) -> list[dict]:
    """The trace's GPU ops, each with the kind of the step whose step() call launched it."""
    events = trace["traceEvents"]
    steps = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"]), e["name"].removeprefix("step:"))
                   for e in events if e.get("cat") == "user_annotation" and e.get("name", "").startswith("step:"))
    starts = [s[0] for s in steps]
    launch_kind = {}
    for e in events:
        # Graph replays launch through the runtime API; cuBLAS and Triton kernels through the driver's.
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {}):
            i = bisect.bisect_right(starts, float(e["ts"])) - 1
            if i >= 0 and float(e["ts"]) <= steps[i][1]:
                launch_kind[e["args"]["correlation"]] = steps[i][2]
    return sorted((dict(name=e["name"], cat=e["cat"], ts=float(e["ts"]), dur=float(e["dur"]),
                        kind=launch_kind.get(e.get("args", {}).get("correlation"), "untagged"))
                   for e in events if e.get("cat") in GPU_CATEGORIES), key=lambda op: op["ts"])


def mark_exclusive(ops: list[dict]) -> list[dict]:
    """Each op (in start order) gets "excl": its time not already covered by earlier ops. Under programmatic
    dependent launch a kernel starts while its predecessor runs and waits for it, so its own duration counts
    that wait; its exclusive time does not. The exclusive times sum to the GPU's busy time."""
    end = float("-inf")
    for op in ops:
        stop = op["ts"] + op["dur"]
        op["excl"] = max(0.0, stop - max(op["ts"], end))
        end = max(end, stop)
    return ops


def busy_us(ops: list[dict]) -> float:
    """The union of the ops' intervals."""
    return sum(op["excl"] for op in mark_exclusive(ops))


def report(ops: list[dict], result: dict, output_tokens: int, top: int) -> None:
    span = ops[-1]["ts"] + ops[-1]["dur"] - ops[0]["ts"]
    busy = busy_us(ops)  # marks each op's exclusive time too
    print(f"profiled run: {result['wall_s']:.3f} s wall, {output_tokens / result['wall_s']:,.0f} output tok/s; "
          f"steps {dict(result['steps'])}")
    print(f"GPU: span {span / 1e3:.1f} ms, busy {busy / 1e3:.1f} ms, idle {(span - busy) / 1e3:.1f} ms "
          f"({100 * (span - busy) / span:.1f}%)")
    for kind in ("prefill", "decode", "untagged"):
        mine = [op for op in ops if op["kind"] == kind]
        if not mine:
            continue
        total = sum(op["excl"] for op in mine)
        steps = result["steps"].get(kind, 0)
        print(f"\n== {kind} steps: {steps}, GPU busy {total / 1e3:.1f} ms"
              + (f" ({total / 1e3 / steps:.2f} ms a step)" if steps else "")
              + "; exclusive time (an op's wait under a predecessor counted to that predecessor)")
        by_family: dict[str, list[float]] = collections.defaultdict(list)
        for op in mine:
            by_family[family(op)].append(op["excl"])
        for name, times in sorted(by_family.items(), key=lambda kv: -sum(kv[1])):
            print(f"  {sum(times) / 1e3:9.1f} ms {100 * sum(times) / total:5.1f}%  {len(times):7d} ops  {name}")
        by_name: dict[str, list[dict]] = collections.defaultdict(list)
        for op in mine:
            by_name[op["name"]].append(op)
        print(f"  top {top} ops (exclusive, and the ops' own mean duration):")
        for name, same in sorted(by_name.items(), key=lambda kv: -sum(op["excl"] for op in kv[1]))[:top]:
            excl = sum(op["excl"] for op in same)
            print(f"  {excl / 1e3:9.1f} ms {len(same):7d} x {sum(op['dur'] for op in same) / len(same):8.1f} us  "
                  f"{name[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--kv-cache-dtype", default="auto")
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-num-tokens", type=int, default=None,
                        help="a step's token budget; default inferline bench's: min(8192, requests x input-len)")
    parser.add_argument("--scheduler-policy", default="max_utilization")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--trace", help="also write the Chrome trace here")
    parser.add_argument("--runs", type=int, default=1, help="bare runs after the warm-up (their median printed)")
    parser.add_argument("--no-profile", action="store_true", help="the bare runs only")
    args = parser.parse_args()
    budget = args.max_num_tokens or min(8192, max(args.requests, args.requests * args.input_len))
    engine = Engine(EngineConfig(model=args.model, device="cuda", dtype=args.dtype, max_batch_size=args.requests,
                                 max_seq_len=args.input_len + args.output_len, max_num_tokens=budget,
                                 kv_cache_dtype=args.kv_cache_dtype, scheduler_policy=args.scheduler_policy))
    gen = torch.Generator().manual_seed(0)
    vocab = engine.model_config.vocab_size
    prompts = [torch.randint(100, vocab - 100, (args.input_len,), generator=gen).tolist() for _ in range(args.requests)]
    params = SamplingParams(max_tokens=args.output_len, min_tokens=args.output_len, detokenize=False)
    warm = run(engine, prompts, params, annotate=False)
    print(f"warm-up run: {warm['wall_s']:.3f} s, {args.requests * args.output_len / warm['wall_s']:,.0f} output tok/s "
          f"(step budget {budget} tokens, {engine.stats().kv_blocks_total} KV blocks)")
    rates = []
    for _ in range(args.runs):
        bare = run(engine, prompts, params, annotate=False)
        rates.append(args.requests * args.output_len / bare["wall_s"])
        print(f"bare run: {bare['wall_s']:.3f} s, {rates[-1]:,.0f} output tok/s; steps {dict(bare['steps'])}")
    if args.runs > 1:
        print(f"median of {args.runs} bare runs: {statistics.median(rates):,.1f} output tok/s")
    if args.no_profile:
        return
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        result = run(engine, prompts, params, annotate=True)
    with tempfile.TemporaryDirectory() as scratch:
        path = args.trace or os.path.join(scratch, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    report(tagged_gpu_ops(trace), result, args.requests * args.output_len, args.top)


if __name__ == "__main__":
    main()
