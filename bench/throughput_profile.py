"""Where a throughput run's GPU time goes: N requests of fixed lengths run to completion as `inferline bench`
drives them (async scheduling, every request added at once), profiled whole. Each step is tagged prefill
(some prompt still being read) or decode (every sequence decoding), and the GPU time of each kind of step is
split into kernel families (GEMMs, attention, norms, ...), with the GPU's idle time.

    python bench/throughput_profile.py --model /tmp/b7-fp8 --kv-cache-dtype fp8 --requests 512 \
        --input-len 128 --output-len 128 [--max-num-tokens 8192] [--trace out.json]

CUDA only. A profiled run is a little slower than a bare one (the profiler's own work on the host).
"""
from __future__ import annotations

import argparse
import bisect
import collections
import json
import os
import re
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from engine import Engine, EngineConfig, SamplingParams

# Kernel families by name, first match wins (cuBLAS / CUTLASS GEMMs, then our Triton kernels by function name).
FAMILIES = {
    "gemm (cuBLAS/CUTLASS)": r"gemm|cutlass|xmma|nvjet|sm90_|sm80_|scaled_mm",
    "gemm (Triton w8/w4/dense)": r"_w8a16|_w4a16|_gemv|_gemm",
    "attention": r"attention|attn|flash|fmha|_split_kv|combine",
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


def prefilling(engine: Engine) -> bool:
    """Whether the next step reads any prompt tokens: a request waits, or a running one is mid-prompt."""
    scheduler = engine.scheduler
    return bool(scheduler.waiting) or any(s.num_computed_tokens < len(s.prompt_token_ids) for s in scheduler.running)


def run(engine: Engine, prompts: list[list[int]], params: SamplingParams, annotate: bool) -> dict:
    """One run of every prompt to completion: wall time, and the number of steps of each kind."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add_request(f"{'prof' if annotate else 'warm'}-{i}", prompt, params)
    kinds: collections.Counter = collections.Counter()
    while engine.has_unfinished():
        kind = "prefill" if prefilling(engine) else "decode"
        kinds[kind] += 1
        if annotate:
            with record_function(f"step:{kind}"):
                engine.step()
        else:
            engine.step()
    torch.cuda.synchronize()
    return dict(wall_s=time.perf_counter() - start, steps=kinds)


def tagged_gpu_ops(trace: dict) -> list[dict]:
    """The trace's GPU ops, each with the kind of the step whose step() call launched it."""
    events = trace["traceEvents"]
    steps = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"]), e["name"].removeprefix("step:"))
                   for e in events if e.get("cat") == "user_annotation" and e.get("name", "").startswith("step:"))
    starts = [s[0] for s in steps]
    launch_kind = {}
    for e in events:
        if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {}):
            i = bisect.bisect_right(starts, float(e["ts"])) - 1
            if i >= 0 and float(e["ts"]) <= steps[i][1]:
                launch_kind[e["args"]["correlation"]] = steps[i][2]
    return sorted((dict(name=e["name"], cat=e["cat"], ts=float(e["ts"]), dur=float(e["dur"]),
                        kind=launch_kind.get(e.get("args", {}).get("correlation"), "untagged"))
                   for e in events if e.get("cat") in GPU_CATEGORIES), key=lambda op: op["ts"])


def busy_us(ops: list[dict]) -> float:
    """The union of the ops' intervals (kernels overlap under programmatic dependent launch)."""
    busy, end = 0.0, float("-inf")
    for op in ops:
        start, stop = max(op["ts"], end), op["ts"] + op["dur"]
        busy += max(0.0, stop - start)
        end = max(end, stop)
    return busy


def report(ops: list[dict], result: dict, output_tokens: int, top: int) -> None:
    span = ops[-1]["ts"] + ops[-1]["dur"] - ops[0]["ts"]
    busy = busy_us(ops)
    print(f"profiled run: {result['wall_s']:.3f} s wall, {output_tokens / result['wall_s']:,.0f} output tok/s; "
          f"steps {dict(result['steps'])}")
    print(f"GPU: span {span / 1e3:.1f} ms, busy {busy / 1e3:.1f} ms, idle {(span - busy) / 1e3:.1f} ms "
          f"({100 * (span - busy) / span:.1f}%)")
    for kind in ("prefill", "decode", "untagged"):
        mine = [op for op in ops if op["kind"] == kind]
        if not mine:
            continue
        total = sum(op["dur"] for op in mine)
        steps = result["steps"].get(kind, 0)
        print(f"\n== {kind} steps: {steps}, GPU time {total / 1e3:.1f} ms"
              + (f" ({total / 1e3 / steps:.2f} ms a step)" if steps else ""))
        by_family: dict[str, list[float]] = collections.defaultdict(list)
        for op in mine:
            by_family[family(op)].append(op["dur"])
        for name, durs in sorted(by_family.items(), key=lambda kv: -sum(kv[1])):
            print(f"  {sum(durs) / 1e3:9.1f} ms {100 * sum(durs) / total:5.1f}%  {len(durs):7d} ops  {name}")
        by_name: dict[str, list[float]] = collections.defaultdict(list)
        for op in mine:
            by_name[op["name"]].append(op["dur"])
        print(f"  top {top} ops:")
        for name, durs in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]:
            print(f"  {sum(durs) / 1e3:9.1f} ms {len(durs):7d} x {sum(durs) / len(durs):8.1f} us  {name[:110]}")


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
          f"(step budget {budget} tokens)")
    bare = run(engine, prompts, params, annotate=False)
    print(f"bare run: {bare['wall_s']:.3f} s, {args.requests * args.output_len / bare['wall_s']:,.0f} output tok/s")
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
