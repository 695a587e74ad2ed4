"""`inferline build`: build (and quantize) an engine, into a local store or through a running builder,
printing progress on stderr and the final engine record (quality report included) on stdout."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Callable, Iterator, Optional

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from pydantic import ValidationError
from tqdm import tqdm

from inferline.cli.errors import fail, user_errors
from inferline.v1 import builder_pb2, builder_pb2_grpc

SCHEMES = "none, int8_wo, int4_wo, awq, gptq, smoothquant, fp8"


def build(
    source: Annotated[str, typer.Option(help="Bundled model name (smollm2-135m), HF checkpoint folder or .gguf file.")],
    name: Annotated[str, typer.Option(help="Engine name in the store.")],
    quantization: Annotated[str, typer.Option(help=f"One of: {SCHEMES}.")] = "none",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16; empty = the checkpoint's own.")] = "",
    group_size: Annotated[int, typer.Option(help="int4 schemes: input channels per scale; 0 = 128.")] = 0,
    quantize_lm_head: Annotated[bool, typer.Option(help="Quantize the lm_head too.")] = False,
    quantize_embedding: Annotated[bool, typer.Option(
        help="Store the token embedding as int8 rows (tied models: with --quantize-lm-head).")] = False,
    smoothquant_alpha: Annotated[Optional[float], typer.Option(help="smoothquant migration strength (0.5).")] = None,
    gptq_act_order: Annotated[bool, typer.Option(help="gptq: quantize columns by decreasing Hessian diagonal.")] = True,
    fp8_granularity: Annotated[str, typer.Option(help="fp8 weight scales: channel or tensor.")] = "",
    fp8_activations: Annotated[str, typer.Option(
        help="fp8 activation scales: token (per token at run time) or tensor (static, calibrated).")] = "",
    max_batch_size: Annotated[int, typer.Option(help="Most sequences the engine runs at once.")] = 16,
    max_seq_len: Annotated[int, typer.Option(help="Longest prompt + output; 0 = the model's context.")] = 0,
    store_dir: Annotated[Path, typer.Option(help="Local engine store (without --builder).")] = Path("engines"),
    device: Annotated[str, typer.Option(help="Local builds: where to quantize and score (cpu, cuda).")] = "cpu",
    calibration_samples: Annotated[int, typer.Option(help="Local builds: calibration sequences.")] = 32,
    calibration_seq_len: Annotated[int, typer.Option(help="Local builds: tokens per calibration sequence.")] = 256,
    eval_windows: Annotated[int, typer.Option(help="Local builds: 512-token perplexity windows scored.")] = 16,
    builder: Annotated[Optional[str], typer.Option(help="HOST:PORT of a running builder to build with instead.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the engine record as one JSON object.")] = False,
) -> None:
    """Build an engine; quantized builds report perplexity and greedy agreement against the source."""
    request = builder_pb2.BuildEngineRequest(
        source=source, name=name, dtype=dtype, quantization=quantization, max_batch_size=max_batch_size,
        max_seq_len=max_seq_len, quantization_options=builder_pb2.QuantizationOptions(
            group_size=group_size, quantize_lm_head=quantize_lm_head, quantize_embedding=quantize_embedding,
            gptq_act_order=gptq_act_order,
            fp8_granularity=fp8_granularity, fp8_activations=fp8_activations, smoothquant_alpha=smoothquant_alpha))
    if builder:
        with _progress(name) as progress:
            record = _remote(builder, request, progress)
    else:
        record = _local(request, store_dir, device, calibration_samples, calibration_seq_len, eval_windows)
    fields = MessageToDict(record, preserving_proto_field_name=True)
    typer.echo(json.dumps(fields) if as_json else _summary(record))


@contextlib.contextmanager
def _progress(name: str) -> Iterator[Callable[[str, float, str], None]]:
    with tqdm(total=100, desc=f"engine {name}", unit="%", leave=False) as bar:
        def progress(stage: str, fraction: float, message: str) -> None:
            bar.set_postfix_str(f"{stage}: {message}"[:80])
            bar.update(round(100 * fraction) - bar.n)

        yield progress


def _local(request: builder_pb2.BuildEngineRequest, store_dir: Path, device: str, calibration_samples: int,
           calibration_seq_len: int, eval_windows: int) -> builder_pb2.EngineRecord:
    # Imported here: the builder's code (and torch) only for local builds.
    from builder.build import build_engine
    from builder.service import build_spec, engine_record
    from builder.settings import BuilderSettings  # the builder's own validation and defaults
    from inferline.engine_store import EngineStore

    try:
        settings = BuilderSettings(device=device, calibration_samples=calibration_samples,
                                   calibration_seq_len=calibration_seq_len, eval_windows=eval_windows)
    except ValidationError as e:
        first = e.errors()[0]
        raise fail(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    with user_errors({"source": "--source", "name": "--name", "quantization": "--quantization"}):
        spec = build_spec(request)  # every field checked before the progress bar starts
        store = EngineStore(store_dir)
        with _progress(spec.name) as progress:
            # A local build reads what its user can read: every path is allowed.
            manifest = build_engine(spec, store, (Path("/"),), progress, settings.quantize)
    return engine_record(manifest, store.path(spec.name), store.checksum(spec.name), "stored")


def _remote(address: str, request: builder_pb2.BuildEngineRequest, progress) -> builder_pb2.EngineRecord:
    record = None
    with grpc.insecure_channel(address) as channel:
        try:
            for event in builder_pb2_grpc.BuilderServiceStub(channel).BuildEngine(request, timeout=24 * 3600):
                progress(event.stage, event.fraction, event.message)
                if event.HasField("engine"):
                    record = event.engine
        except grpc.RpcError as err:
            raise fail(f"{err.code().name.lower()}: {err.details()}", code=1) from None
    if record is None:
        raise fail("the builder ended the build without an engine record", code=1)
    return record


def _summary(record: builder_pb2.EngineRecord) -> str:
    lines = [f"engine {record.name!r}: {record.quantization or 'none'}, {record.dtype}, {record.size_bytes / 1e6:.1f} MB",
             f"  path {record.path}", f"  fingerprint {record.fingerprint}"]
    if record.HasField("quality"):
        q = record.quality
        lines.append(f"  perplexity {q.perplexity:.3f} (unquantized {q.reference_perplexity:.3f}, "
                     f"{q.perplexity_change:+.2%}), greedy agreement {q.greedy_agreement:.1%} over "
                     f"{q.eval_tokens} evaluation tokens")
        lines.append(f"  weights {q.weight_bytes / 1e6:.1f} MB (unquantized {q.reference_weight_bytes / 1e6:.1f} MB), "
                     f"peak build memory {q.peak_build_memory_bytes / 1e6:.0f} MB, quantized in {q.quantize_seconds:.1f} s")
    return "\n".join(lines)
