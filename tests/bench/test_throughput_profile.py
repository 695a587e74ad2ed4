"""bench/throughput_profile.py's reading of a profiler trace (CPU, a synthetic trace): GPU ops tagged with the
kind of step whose launch issued them, kernels sorted into families, overlapping time counted once, to the
op that started first."""
import collections
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))

from throughput_profile import busy_us, family, mark_exclusive, tagged_gpu_ops  # noqa: E402


def trace() -> dict:
    """A prefill step (two launches) then a decode step (a graph launch of two kernels); one launch outside
    any step; the GPU runs each launch's work later than its launch, as with async scheduling."""
    steps = [("step:prefill", 0, 100), ("step:decode", 100, 50)]
    launches = [(1, 10), (2, 60), (3, 120), (4, 170)]  # (correlation, ts): 4 is after both steps
    gpu = [(1, "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", 200, 40, "kernel"),
           (2, "_fp8_quantize_per_token_kernel", 240, 5, "kernel"),
           (3, "_paged_decode_kernel", 250, 30, "kernel"),
           (3, "_rms_norm_residual_kernel", 270, 20, "kernel"),  # overlaps the attention by 10 us
           (4, "Memcpy DtoH (Device -> Pinned)", 300, 2, "gpu_memcpy")]
    events = [{"cat": "user_annotation", "name": name, "ts": ts, "dur": dur} for name, ts, dur in steps]
    events += [{"cat": "cuda_runtime" if c % 2 else "cuda_driver", "name": "cuLaunchKernelEx", "ts": ts, "dur": 3,
                "args": {"correlation": c}} for c, ts in launches]  # Triton and cuBLAS launch through the driver
    events += [{"cat": cat, "name": name, "ts": ts, "dur": dur, "args": {"correlation": c}}
               for c, name, ts, dur, cat in gpu]
    return {"traceEvents": events}


def test_gpu_ops_take_the_kind_of_the_step_that_launched_them():
    ops = tagged_gpu_ops(trace())
    assert [(op["name"][:12], op["kind"]) for op in ops] == [
        ("nvjet_tst_12", "prefill"), ("_fp8_quantiz", "prefill"), ("_paged_decod", "decode"),
        ("_rms_norm_re", "decode"), ("Memcpy DtoH ", "untagged")]


def test_kernels_fall_into_families_and_overlap_counts_once():
    ops = tagged_gpu_ops(trace())
    assert [family(op) for op in ops] == ["gemm (cuBLAS/CUTLASS)", "fp8 activation quant", "attention",
                                         "rms norm (+residual)", "gpu_memcpy"]
    assert busy_us(ops) == 40 + 5 + 40 + 2  # 250..290 once, though two kernels cover 270..280


def test_an_op_waiting_under_its_predecessor_counts_only_past_it():
    """The norm launched early (as under PDL) runs 270..290 beside the attention's 250..280: 10 us its own."""
    ops = mark_exclusive(tagged_gpu_ops(trace()))
    assert [op["excl"] for op in ops] == [40, 5, 30, 10, 2]
    assert sum(op["excl"] for op in ops) == busy_us(ops)


def test_steps_are_tagged_by_what_the_scheduler_put_in_them(make_engine):
    """Two sequences fit the pool at a time: while the other two wait, the running ones' steps are decode
    steps; each pair's prompt step is a prefill step. Under the profiler each step's range carries its tag."""
    import torch.profiler

    from engine import SamplingParams
    from throughput_profile import StepTagger

    engine = make_engine(block_size=4, num_kv_blocks=6, max_batch_size=4, scheduler_policy="guaranteed_no_evict")
    method = type(engine.scheduler).schedule
    params = SamplingParams(max_tokens=4, min_tokens=4, detokenize=False)
    for i in range(4):
        engine.add_request(f"r{i}", list(range(100 + i, 108 + i)), params)  # 8 + 4 tokens: 3 of the 6 blocks
    waiting_at_decode = []
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with StepTagger(engine, annotate=True) as tagger:
            while engine.has_unfinished():
                before = dict(tagger.kinds)
                tagger.step()
                if tagger.kinds["decode"] > before.get("decode", 0):
                    waiting_at_decode.append(len(engine.scheduler.waiting))
    assert dict(tagger.kinds) == {"prefill": 2, "decode": 6}
    assert waiting_at_decode[:3] == [2, 2, 2]  # the first pair decodes while the second waits
    ranges = collections.Counter(e.name for e in prof.events() if e.name.startswith("step:"))
    assert ranges == {"step:prefill": 2, "step:decode": 6}
    assert engine.scheduler.schedule.__func__ is method  # the wrapper is gone
