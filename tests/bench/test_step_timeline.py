"""bench/step_timeline.py's reading of a profiler trace (CPU, a synthetic trace): graph kernels told from the
operations outside the graph by their launch, steps cut between them, idle time counted once under overlap."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))

from step_timeline import gpu_ops, steps, summarize  # noqa: E402


def trace(num_steps: int) -> dict:
    """Each step: an input copy (2 us), a 1 us gap, three graph kernels of 10 us (the last two overlapping
    by 2 us, as PDL lets them), a 1 us gap, an argmax (3 us), a 2 us gap."""
    events, t = [], 0.0
    for step in range(num_steps):
        graph = 1000 + step
        events.append({"cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": t, "dur": 5, "args": {"correlation": graph}})
        events.append({"cat": "gpu_memcpy", "name": "Memcpy HtoD", "ts": t, "dur": 2, "args": {"correlation": step}})
        t += 3
        for k, start in enumerate((0, 10, 18)):
            events.append({"cat": "kernel", "name": f"gemv{k}", "ts": t + start, "dur": 10, "args": {"correlation": graph}})
        t += 29
        events.append({"cat": "kernel", "name": "_argmax_kernel", "ts": t, "dur": 3, "args": {"correlation": 500 + step}})
        t += 5
    return {"traceEvents": events}


def test_steps_split_graph_from_outside_and_count_idle_once():
    cut = steps(gpu_ops(trace(5)))
    assert len(cut) == 4  # argmax of step N through the graph of N + 1; the window cuts the ends off
    assert [op["name"] for op in cut[0]] == ["_argmax_kernel", "Memcpy HtoD", "gemv0", "gemv1", "gemv2"]
    row = summarize(cut[0], cut[1][0]["ts"])
    # period 37 us: graph 28 us end to end (overlap counted once), outside 3 + 2 us, idle 2 + 1 + 1 us
    assert row["span_us"] == 37 and row["graph_us"] == 28 and row["outside_us"] == 5 and row["idle_us"] == 4
    assert row["outside"] == [("_argmax_kernel", 3.0), ("Memcpy HtoD", 2.0)]
