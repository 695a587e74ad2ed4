"""Scratch: decode-graph replay with kernels removed (an upper bound on what fusing them away saves)."""
import gc, statistics, sys, torch
import engine.layers.norm as norm_mod
import engine.layers.attention.triton.rope_store_kv as rope_mod
from engine import Engine, EngineConfig, SamplingParams

orig_norm, orig_rope = norm_mod.RMSNorm.forward, rope_mod.rope_store_kv

def skip_norm(self, x, residual=None):
    if x.is_cuda and x.shape[0] <= 4:
        return x if residual is None else (x, residual)
    return orig_norm(self, x, residual)

def skip_rope(q, k, v, kc, vc, slots, positions, cos, sin, ks, vs):
    if q.shape[0] <= 4:
        return None
    return orig_rope(q, k, v, kc, vc, slots, positions, cos, sin, ks, vs)

def replay(model, norm, rope):
    norm_mod.RMSNorm.forward = skip_norm if not norm else orig_norm
    rope_mod.rope_store_kv = skip_rope if not rope else orig_rope
    eng = Engine(EngineConfig(model=model, device="cuda", dtype="bfloat16", max_batch_size=1, max_seq_len=200))
    params = SamplingParams(max_tokens=8, min_tokens=8, detokenize=False)
    eng.add_request("a", list(range(100, 228)), params)
    while eng.has_unfinished():
        eng.step()
    bs, graph = eng.runner.graphs.decode_graph(1)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(60):
        s.record(); graph.replay(); e.record(); e.synchronize(); times.append(s.elapsed_time(e))
    del eng, graph; gc.collect(); torch.cuda.empty_cache()
    return statistics.median(times[10:])

for model in sys.argv[1:]:
    res = {}
    for name, norm, rope in [("base", True, True), ("no_norm", False, True), ("no_rope_store", True, False),
                             ("neither", False, False), ("base2", True, True)]:
        res[name] = replay(model, norm, rope)
        print(f"{model.split('/')[-1]} {name}: {res[name]:.3f} ms", flush=True)
