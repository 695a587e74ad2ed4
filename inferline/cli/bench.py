"""`inferline bench`: latency/throughput/memory over a grid of batch sizes and lengths, like
TensorRT-LLM's benchmarks/python/benchmark.py, optionally against HF transformers in the same process;
or (--workload mixed, bench_mixed.py) static vs in-flight batching on requests of mixed output lengths."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Protocol

import structlog
import torch
import typer

from engine import InvalidParameterError
from engine.config import POLICIES
from engine.kv_cache import KV_CACHE_DTYPES
from inferline.cli.bench_cases import Case, make_cases, parse_batch_sizes, parse_input_output_len, random_prompts
from inferline.cli.bench_mixed import make_spec, run_mixed
from inferline.cli.bench_plots import plot_results, prepare_plot_dir
from inferline.cli.bench_report import CaseResult, CaseTiming, Comparison, comparison_table
from inferline.cli.device import DEVICE_HELP, DTYPE_HELP, KV_CACHE_DTYPE_HELP, resolve_device
from inferline.cli.engine_bench import EngineSide
from inferline.cli.errors import user_errors
from inferline.memory import GIB, PeakMemoryTracker, release_memory

log = structlog.get_logger(__name__)

MEMORY_HELP = (
    "peak_mem(gb) is GiB counted from just before each side loads its model (weights + KV cache + activations): "
    "on CUDA torch.cuda.max_memory_allocated() minus what was allocated before; on CPU the peak process RSS, "
    "sampled every 2 ms by a background thread, minus the RSS before the load."
)


class Side(Protocol):
    name: str

    @property
    def precision(self) -> str: ...

    def measure(self, prompts: list[list[int]], output_len: int, warmup: int, runs: int) -> CaseTiming: ...

    def close(self) -> None: ...


def bench(
    model: Annotated[str, typer.Option(help="Bundled model name (smollm2-135m), HF checkpoint folder, .gguf file or "
                                            "engine folder; several comma-separated are run one after another "
                                            "(e.g. one model quantized several ways).")],
    batch_size: Annotated[str, typer.Option(help="Comma-separated batch sizes, e.g. 1,8.")] = "8",
    input_output_len: Annotated[str, typer.Option(
        help="Semicolon-separated IN,OUT token counts, e.g. '32,50;128,50'. Every sequence gets exactly IN random "
             "prompt tokens and generates exactly OUT tokens (EOS ignored).")] = "128,20",
    compare_hf: Annotated[bool, typer.Option(
        help="Also run HF transformers (AutoModelForCausalLM, eager attention, same dtype and device) on the same "
             "prompts after our engine is freed, and print a comparison table.")] = False,
    hf_model: Annotated[Optional[str], typer.Option(
        help="With --compare-hf: the checkpoint HF transformers runs (default: the first --model). For quantized "
             "engines, their unquantized source.")] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    dtype: Annotated[Optional[str], typer.Option(help=DTYPE_HELP)] = None,
    kv_cache_dtype: Annotated[str, typer.Option(help=f"Our engine's {KV_CACHE_DTYPE_HELP}.")] = "auto",
    kv_cache_free_mem_fraction: Annotated[float, typer.Option(
        help="grid: share of the memory free after our engine's weights that its KV pool may take, less a "
             "step's activations (TensorRT-LLM's kv_cache_free_gpu_mem_fraction).")] = 0.9,
    warmup: Annotated[int, typer.Option(help="Untimed runs per case before the timed ones (mixed: passes of short "
                                             "warm-up requests per engine).")] = 1,
    runs: Annotated[int, typer.Option(help="Timed runs per case; latency is their median (mixed: per mode, every "
                                           "statistic is the median over runs).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the random prompts (mixed: and of the output lengths).")] = 0,
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Also write every result to this JSON file.")] = None,
    plot_dir: Annotated[Optional[Path], typer.Option(
        help="Also draw PNGs here (needs matplotlib): throughput_vs_batch.png for the grid, "
             "latency_static_vs_inflight.png for --workload mixed.")] = None,
    scheduler_policy: Annotated[str, typer.Option(
        help="grid: our engine's scheduler policy. max_utilization admits every request at once and preempts when "
             "KV runs out; guaranteed_no_evict admits a request only when its whole prompt + output fits.")
    ] = "max_utilization",
    workload: Annotated[str, typer.Option(
        help="grid: every --batch-size x --input-output-len case. mixed: --requests requests of mixed output "
             "lengths, all submitted at once, under each --batching mode.")] = "grid",
    requests: Annotated[Optional[int], typer.Option(help="mixed: number of requests.", show_default="256")] = None,
    input_len: Annotated[Optional[int], typer.Option(help="mixed: prompt tokens per request.", show_default="128")] = None,
    output_len_range: Annotated[Optional[str], typer.Option(
        help="mixed: LO,HI; each request's output length is drawn from it (seeded by --seed; see "
             "--output-len-dist), the same draws for every mode.", show_default="16,512")] = None,
    output_len_dist: Annotated[Optional[str], typer.Option(
        help="mixed: uniform (every length in LO..HI equally likely) or geometric (each token after LO ends the "
             "request with a fixed probability, as a sampled EOS does: mean LO + (HI - LO) / 4, capped at HI).",
        show_default="uniform")] = None,
    batching: Annotated[Optional[str], typer.Option(
        help="mixed: batching modes to run, each on a freshly loaded engine.", show_default="static,inflight")] = None,
    max_batch_size: Annotated[Optional[int], typer.Option(
        help="mixed: the engines' max_batch_size (sequences per step).", show_default="64")] = None,
    async_scheduling: Annotated[Optional[bool], typer.Option(
        "--async-scheduling/--no-async-scheduling",
        help="Launch each engine step before the previous one's tokens are read back.",
        show_default="on for CUDA, off for CPU")] = None,
) -> None:
    """Benchmark generation latency, throughput and peak memory; one [BENCHMARK] line per case on stdout."""
    mixed_options = {"--requests": requests, "--input-len": input_len, "--output-len-range": output_len_range,
                     "--output-len-dist": output_len_dist,
                     "--batching": batching, "--max-batch-size": max_batch_size}
    with user_errors():  # everything checked before a model loads
        if warmup < 0:
            raise InvalidParameterError("--warmup", f"must be >= 0, got {warmup}")
        if runs < 1:
            raise InvalidParameterError("--runs", f"must be >= 1, got {runs}")
        dev = resolve_device(device)
        models = [m.strip() for m in model.split(",") if m.strip()]
        if not models:
            raise InvalidParameterError("--model", "names no model")
        if scheduler_policy not in POLICIES:
            raise InvalidParameterError("--scheduler-policy", f"must be one of {', '.join(POLICIES)}, got {scheduler_policy!r}")
        if not 0 < kv_cache_free_mem_fraction <= 1:
            raise InvalidParameterError("--kv-cache-free-mem-fraction",
                                        f"must be in (0, 1], got {kv_cache_free_mem_fraction}")
        if kv_cache_dtype not in KV_CACHE_DTYPES:
            raise InvalidParameterError("--kv-cache-dtype",
                                        f"must be one of {', '.join(KV_CACHE_DTYPES)}, got {kv_cache_dtype!r}")
        if workload == "mixed":
            if compare_hf or hf_model:
                raise InvalidParameterError("--compare-hf" if compare_hf else "--hf-model",
                                            "only applies to --workload grid")
            if len(models) != 1:
                raise InvalidParameterError("--model", f"--workload mixed runs one model, got {len(models)}")
            spec = make_spec(requests, input_len, output_len_range, batching, max_batch_size, output_len_dist)
        elif workload == "grid":
            given = [option for option, value in mixed_options.items() if value is not None]
            if given:
                raise InvalidParameterError(given[0], "only applies to --workload mixed")
            cases = make_cases(parse_batch_sizes(batch_size), parse_input_output_len(input_output_len))
        else:
            raise InvalidParameterError("--workload", f"must be grid or mixed, got {workload!r}")
        if plot_dir is not None:
            prepare_plot_dir(plot_dir, "--plot-dir")  # without matplotlib this fails now, not after the runs
    if workload == "mixed":
        with user_errors({"max_seq_len": "--input-len/--output-len-range", "max_batch_size": "--max-batch-size"}):
            _import_loading_code()
            payload = run_mixed(models[0], _model_label(models[0]), dev, dtype, spec, warmup, runs, seed,
                                kv_cache_dtype, async_scheduling)
    else:
        payload = _bench_grid(model, models, hf_model, compare_hf, dev, dtype, cases, warmup, runs, seed,
                              scheduler_policy, kv_cache_dtype, async_scheduling,
                              kv_cache_free_mem_fraction=kv_cache_free_mem_fraction)
    _save(payload, json_file, plot_dir)


def _bench_grid(model: str, models: list[str], hf_model: Optional[str], compare_hf: bool, dev: str,
                dtype: Optional[str], cases: list[Case], warmup: int, runs: int, seed: int,
                scheduler_policy: str, kv_cache_dtype: str, async_scheduling: bool | None, *,
                kv_cache_free_mem_fraction: float) -> dict[str, Any]:
    with user_errors({"max_seq_len": "--input-output-len", "max_batch_size": "--batch-size"}):
        prompts: dict[Case, list[list[int]]] = {}
        resolved: dict[str, Any] = {}  # engine settings as the engine resolved them, for the JSON

        def load_ours(name: str) -> EngineSide:
            max_batch = max(c.batch_size for c in cases)
            # The step budget fits the largest batch's prompts (at most the engine default, 8192), so the
            # activation memory reserved next to the KV pool is what the cases need.
            step_tokens = min(8192, max(max_batch, *(c.batch_size * c.input_len for c in cases)))
            side = EngineSide(name, dev, dtype, max_batch, max(c.input_len + c.output_len for c in cases),
                              step_tokens, scheduler_policy, kv_cache_dtype, async_scheduling,
                              kv_cache_free_mem_fraction=kv_cache_free_mem_fraction)
            resolved["async_scheduling"] = side.engine.async_scheduling
            resolved["kv_blocks"] = side.engine.stats().kv_blocks_total
            # Every side gets these same prompts; the checkpoint's vocabulary comes with our (first) engine.
            for case in cases:
                prompts.setdefault(case, random_prompts(case, side.engine.model_config.vocab_size,
                                                        side.engine.tokenizer, seed))
            return side

        _import_loading_code()
        ours = {name: _run_side(lambda: load_ours(name), name, dev, cases, prompts, warmup, runs) for name in models}
        hf: list[CaseResult] = []
        if compare_hf:
            hf_dtype = getattr(torch, ours[models[0]][0].precision)  # whatever our engine resolved dtype=None to
            from inferline.cli.hf_reference import HFSide, resolve_hf_model  # transformers' model code, only if asked

            reference = hf_model or models[0]
            spec = resolve_hf_model(reference)
            hf = _run_side(lambda: HFSide(spec, dev, hf_dtype), reference, dev, cases, prompts, warmup, runs)
    comparisons = [Comparison(o, h) for results in ours.values() for o, h in zip(results, hf)]
    if comparisons:
        typer.echo("\n" + comparison_table(comparisons))
        typer.echo("lat. red. = 1 - ours/hf latency; speedup = hf/ours latency; mem red. = 1 - ours/hf peak memory")
    return {"workload": "grid", "model": model, "device": dev, "kv_cache_dtype": kv_cache_dtype,
            "kv_cache_free_mem_fraction": kv_cache_free_mem_fraction, **resolved,
            "warmup": warmup, "runs": runs, "seed": seed,
            "results": [r.to_json() for rs in ours.values() for r in rs] + [r.to_json() for r in hf],
            "comparison": [c.to_json() for c in comparisons]}


def _save(payload: dict[str, Any], json_file: Optional[Path], plot_dir: Optional[Path]) -> None:
    with user_errors():
        if json_file is not None:
            try:
                json_file.write_text(json.dumps(payload, indent=2) + "\n")
            except OSError as err:
                raise InvalidParameterError("--json", f"cannot write {json_file}: {err.strerror}") from None
            log.info("bench_json_written", path=str(json_file))
        if plot_dir is not None:
            for path in plot_results(payload, plot_dir):
                log.info("bench_plot_written", path=str(path))


def _run_side(load: Callable[[], Side], model: str, device: str, cases: list[Case],
              prompts: dict[Case, list[list[int]]], warmup: int, runs: int) -> list[CaseResult]:
    """Load one side under a fresh memory tracker, run every case, print each line as it finishes."""
    torch_device = torch.device(device)
    results = []
    with PeakMemoryTracker(torch_device) as memory:
        log.info("bench_load", memory_baseline_gib=round(memory.baseline / GIB, 3))
        side = load()
        load_peak = memory.checkpoint()
        for case in cases:
            log.info("bench_case", engine=side.name, batch_size=case.batch_size, input_len=case.input_len,
                     output_len=case.output_len, warmup=warmup, runs=runs)
            timing = side.measure(prompts[case], case.output_len, warmup, runs)
            result = CaseResult(side.name, _model_label(model), device, side.precision, case, timing,
                                load_peak, memory.checkpoint())
            typer.echo(result.benchmark_line())
            results.append(result)
        side.close()
        del side
    release_memory(torch_device)
    return results


def _import_loading_code() -> None:
    """Import, before any memory window opens, the transformers code that loading pulls in lazily (our
    tokenizer, GGUF conversion, HF's model loading; ~0.05-0.1 GiB of RSS, with accelerate and sympy):
    else the first side to load would be charged for Python modules the second then gets for free."""
    import importlib

    for module in ("transformers.models.auto.tokenization_auto", "transformers.modeling_utils",
                   "transformers.modeling_gguf_pytorch_utils"):
        try:
            importlib.import_module(module)
        except ImportError:  # an optional piece (e.g. gguf support) missing: its loader would fail anyway
            pass


def _model_label(model: str) -> str:
    return Path(model).name if ("/" in model or model.endswith(".gguf")) else model
