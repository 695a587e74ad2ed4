"""On a CUDA machine: async and one-step-at-a-time scheduling give the same tokens (greedy, seeded
sampling, penalties, logprobs) and an async step makes the host wait for nothing but its own tokens.

    python bench/check_async_scheduling.py /tmp/inferline-bench/baichuan2-7b-random

One engine, its `async_scheduling` flag toggled between passes; then a mixed batch of async steps under
torch.cuda.set_sync_debug_mode("warn"), which names every synchronizing operation (the tokens' own
event wait is not one). Prints "async == sync: [...]" per pass and "syncing ops in async steps: ...".
"""
import sys
import warnings

import torch

from engine import Engine, EngineConfig, SamplingParams

engine = Engine(EngineConfig(model=sys.argv[1], device="cuda", dtype="bfloat16", max_batch_size=8, max_seq_len=256))
gen = torch.Generator().manual_seed(0)
prompts = [torch.randint(100, 30000, (n,), generator=gen).tolist() for n in (5, 17, 40, 90, 33)]
cases = [SamplingParams(max_tokens=24, ignore_eos=True), SamplingParams(max_tokens=24, temperature=0.8, seed=3),
         SamplingParams(max_tokens=16, repetition_penalty=1.2), SamplingParams(max_tokens=12, logprobs=True, top_logprobs=2)]
reference = None
for flag in (False, True, False, True):
    engine.async_scheduling = flag
    outs = [[o.token_ids for o in engine.generate(prompts, p)] for p in cases]
    if flag:
        print("async == sync:", [a == b for a, b in zip(outs, reference)])
    else:
        reference = outs
    print("blocks used after:", engine.stats().kv_blocks_used)

engine.async_scheduling = True
mix = [SamplingParams(max_tokens=30, min_tokens=30),
       SamplingParams(max_tokens=30, temperature=0.7, top_p=0.9, top_k=40, min_p=0.01),
       SamplingParams(max_tokens=30, logprobs=True, top_logprobs=3), SamplingParams(max_tokens=30, ignore_eos=True)]
for i, params in enumerate(mix):
    engine.add_request(f"dbg{i}", prompts[i], params)
engine.step()
engine.step()
torch.cuda.set_sync_debug_mode("warn")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    while engine.has_unfinished():
        engine.step()
torch.cuda.set_sync_debug_mode("default")
seen = {f"{w.filename}:{w.lineno}": str(w.message)[:60] for w in caught}
print("syncing ops in async steps:", seen or "none")
