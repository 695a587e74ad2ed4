"""PNG plots of `inferline bench` results, drawn from the JSON record (so committed JSON can be re-plotted
with `inferline bench-plot`): throughput vs batch size for the grid, the request latency distribution of
static vs in-flight batching for the mixed workload. matplotlib (Agg backend) is imported only here."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any, Optional

import structlog
import typer

from engine import InvalidParameterError
from inferline.cli.errors import user_errors

log = structlog.get_logger(__name__)

THROUGHPUT_PNG = "throughput_vs_batch.png"
LATENCY_PNG = "latency_static_vs_inflight.png"
MODE_STYLE = {"static": ("tab:orange", "static batching"), "inflight": ("tab:blue", "in-flight batching")}


def _pyplot(option: str) -> Any:
    try:
        import matplotlib
    except ImportError:
        raise InvalidParameterError(option, "plots need matplotlib, which is not installed "
                                            "(pip install 'matplotlib>=3.8'; it is in the dev extra)") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def prepare_plot_dir(path: Path, option: str) -> None:
    """Fail early, before any model loads: matplotlib missing or a folder that cannot be made."""
    _pyplot(option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvalidParameterError(option, f"cannot create {path}: {err.strerror}") from None


def plot_results(payload: dict[str, Any], out_dir: Path, option: str = "--plot-dir") -> list[Path]:
    """Whatever plot the record's workload has; returns the files written."""
    prepare_plot_dir(out_dir, option)
    if payload.get("workload") == "mixed" or "modes" in payload:
        return [plot_latency(payload, out_dir / LATENCY_PNG)]
    if payload.get("results"):
        return [plot_throughput(payload["results"], out_dir / THROUGHPUT_PNG)]
    raise InvalidParameterError(option, "the record has neither grid results nor mixed-workload modes")


def plot_throughput(results: list[dict[str, Any]], path: Path) -> Path:
    """Tokens/s vs batch size (log2 axis), one line per (engine, model, input->output case)."""
    plt = _pyplot("--plot-dir")
    lines: dict[tuple[str, str, int, int], list[tuple[int, float]]] = defaultdict(list)
    for r in results:
        lines[(r["engine"], r["model"], r["input_len"], r["output_len"])].append((r["batch_size"], r["tokens_per_sec"]))
    fig, ax = plt.subplots(figsize=(7 if len(lines) <= 4 else 10, 4.5), layout="constrained")
    colors = plt.get_cmap("tab10" if len(lines) <= 10 else "tab20").colors
    for n, ((engine, model, i, o), points) in enumerate(lines.items()):
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, "--" if engine.startswith("hf") else "-", marker="o", color=colors[n % len(colors)],
                label=f"{engine} · {model} · {i}→{o}")
    batch_sizes = sorted({r["batch_size"] for r in results})
    ax.set_xscale("log", base=2)
    ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch size")
    ax.set_ylabel("generated tokens/s")
    where = ", ".join(sorted({f"{r['device']} {r['precision']}" for r in results}))
    ax.set_title(f"Throughput vs batch size ({where})")
    ax.grid(True, alpha=0.3)
    if len(lines) <= 4:
        ax.legend(fontsize="small")
    else:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(fig, plt, path)


def plot_latency(payload: dict[str, Any], path: Path) -> Path:
    """Empirical CDFs of request latency and of time to first token, every mode on the same axes, the
    reported p50/p99 (medians over runs) marked; the samples pool every timed run's requests."""
    plt = _pyplot("--plot-dir")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    for ax, key, quantiles, xlabel in ((axes[0], "latencies_ms", ("p50", "p99"), "request latency (s)"),
                                       (axes[1], "ttfts_ms", ("p50", "p99"), "time to first token (s)")):
        summary_key = "latency_ms" if key == "latencies_ms" else "ttft_ms"
        for row, mode in enumerate(payload["modes"]):
            color, label = MODE_STYLE.get(mode["batching"], (None, mode["batching"]))
            line = ax.ecdf([v / 1e3 for run in mode["runs"] for v in run[key]], color=color, label=label)
            for q in quantiles:
                x = mode[summary_key][q] / 1e3
                ax.axvline(x, color=line.get_color(), linestyle=":", linewidth=1)
                ax.annotate(f"{q} {x:.2f}s", (x, int(q[1:]) / 100), textcoords="offset points",
                            xytext=(3, -10 - 10 * row), fontsize="x-small", color=line.get_color(),
                            bbox={"fc": "white", "ec": "none", "alpha": 0.7, "pad": 0.5})
        ax.set_xlabel(xlabel)
        ax.set_ylabel("share of requests")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    lo, hi = payload["output_len_range"]
    dist = payload.get("output_len_dist", "uniform")  # JSON written before the option existed: uniform
    title = (f"{payload['requests']} requests, {payload['input_len']} prompt tokens, output {lo}..{hi} ({dist}), "
             f"max batch {payload['max_batch_size']}, {payload['device']}, {payload['runs']} run(s)")
    comparison = payload.get("comparison")
    if comparison:
        title += (f"\nin-flight/static: throughput {comparison['throughput_ratio']:.2f}x, "
                  f"p99 latency {comparison['p99_latency_ratio']:.2f}x")
    fig.suptitle(title, fontsize="medium")
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> Path:
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def bench_plot(
    result: Annotated[Path, typer.Argument(help="A JSON file written by `inferline bench --json`.")],
    out: Annotated[Optional[Path], typer.Option(help="Folder for the PNGs (default: the JSON file's folder).")] = None,
) -> None:
    """Draw the PNG plots of a saved `inferline bench --json` record (as `bench --plot-dir` does)."""
    with user_errors():
        try:
            payload = json.loads(result.read_text())
        except (OSError, ValueError) as err:
            raise InvalidParameterError("RESULT", f"cannot read {result} as JSON: {err}") from None
        if not isinstance(payload, dict):
            raise InvalidParameterError("RESULT", f"{result} is not an inferline bench record")
        try:
            paths = plot_results(payload, out if out is not None else result.parent, "--out")
        except (KeyError, TypeError, ValueError) as err:  # a hand-edited or foreign record
            raise InvalidParameterError("RESULT", f"{result} is not a complete inferline bench record "
                                                  f"({type(err).__name__}: {err})") from None
        for path in paths:
            typer.echo(str(path))
