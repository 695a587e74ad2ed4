"""The build itself, no gRPC: validate a request, fingerprint its inputs, then either find the engine
already in the store (same fingerprint, files verified) or convert the checkpoint into a staging
folder and commit it into the store atomically.

The fingerprint is the sha256 of a canonical JSON of the build's inputs: the source's content identity
(source.py), the effective dtype, the quantization, max_batch_size, max_seq_len as requested (0 = the
model's context), BUILDER_VERSION and the store's format version. Deciding "no rebuild" reads no
weights: hashing the source and verifying the stored engine are the only costs.

dtype "" means the checkpoint's own: a HF folder's config.json dtype when it is one we store, else
float32. GGUF sources (the bundled model too) dequantize to float32, so float32 keeps them exact;
half precision is stored only when asked for.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import structlog
import torch

from builder.errors import BuildInputError
from builder.source import Source, resolve_source
from builder.quantize.settings import QuantizeSettings
from builder.quantized_build import convert_quantized
from engine.config import DTYPES
from engine.layers.quantization import SCHEMES, QuantizationConfig
from engine.errors import InvalidParameterError
from engine.loader import Checkpoint, open_checkpoint
from engine.loader.export import export_hf_folder
from engine.models.config import ModelConfig
from engine.tokenizer import load_tokenizer
from inferline.engine_store import FORMAT_VERSION, NAME_PATTERN, EngineCorruptError, EngineStore, Manifest

log = structlog.get_logger(__name__)

BUILDER_VERSION = 1  # bump whenever a build writes different files for the same inputs
DEFAULT_DTYPE = "float32"
QUANTIZATIONS = ("none", *SCHEMES)

# (stage, fraction of the whole build done, message). build_engine reports resolve, convert and
# checksum; the servicer reports register and done, which need Redis.
ProgressCallback = Callable[[str, float, str], None]
STAGES = ("resolve", "convert", "checksum", "register", "done")


@dataclass(frozen=True)
class BuildSpec:
    """A build request whose fields are each valid on their own (nothing read from disk yet)."""

    source: str
    name: str
    dtype: str  # "" = the checkpoint's own, else a key of engine.config.DTYPES
    quantization: QuantizationConfig | None  # None: unquantized
    max_batch_size: int
    max_seq_len: int  # 0 = the model's context length

    @property
    def scheme(self) -> str:
        return self.quantization.scheme if self.quantization else "none"

    @classmethod
    def parse(cls, *, source: str, name: str, dtype: str = "", quantization: str = "", max_batch_size: int,
              max_seq_len: int = 0, group_size: int = 0, quantize_lm_head: bool = False,
              quantize_embedding: bool = False, smoothquant_alpha: float | None = None, gptq_act_order: bool | None = None,
              fp8_granularity: str = "", fp8_activations: str = "") -> BuildSpec:
        if not NAME_PATTERN.match(name or ""):
            raise BuildInputError("name", f"{name!r} must match {NAME_PATTERN.pattern}")
        if dtype and dtype not in DTYPES:
            raise BuildInputError("dtype", f"must be one of {', '.join(DTYPES)} (or empty for the checkpoint's own), "
                                           f"got {dtype!r}")
        if quantization not in ("", *QUANTIZATIONS):
            raise BuildInputError("quantization", f"unknown scheme {quantization!r}; one of {', '.join(QUANTIZATIONS)} "
                                                  "(empty = none)")
        if max_batch_size < 1:
            raise BuildInputError("max_batch_size", f"must be >= 1, got {max_batch_size}")
        if max_seq_len == 1 or max_seq_len < 0:  # the engine needs room for a prompt token and an output token
            raise BuildInputError("max_seq_len", f"must be >= 2 (or 0 for the model's context), got {max_seq_len}")
        config = None
        if quantization not in ("", "none"):
            try:
                config = QuantizationConfig(
                    scheme=quantization, group_size=group_size or 128, lm_head=quantize_lm_head,
                    embedding=quantize_embedding,
                    alpha=0.5 if smoothquant_alpha is None else smoothquant_alpha, act_order=True if gptq_act_order is None else gptq_act_order,
                    # static activation scales need per-tensor weights: the default then
                    fp8_granularity=fp8_granularity or ("tensor" if fp8_activations == "tensor" else "channel"),
                    fp8_activations=fp8_activations or "token")
            except InvalidParameterError as e:
                raise BuildInputError(f"quantization_options.{e.field}", e.problem) from e
        elif quantize_embedding:
            raise BuildInputError("quantization_options.quantize_embedding", "needs a quantization scheme")
        return cls(source=source, name=name, dtype=dtype, quantization=config, max_batch_size=max_batch_size,
                   max_seq_len=max_seq_len)


def fingerprint(identity: dict, dtype: str, spec: BuildSpec, quantize: QuantizeSettings) -> str:
    inputs = {"builder_version": BUILDER_VERSION, "format_version": FORMAT_VERSION, "source": identity,
              "dtype": dtype, "quantization": spec.scheme, "max_batch_size": spec.max_batch_size,
              "max_seq_len": spec.max_seq_len}
    if spec.quantization is not None:  # what decides the quantized values and the quality report
        inputs["quantization"] = {**spec.quantization.to_dict(), **quantize.identity(spec.quantization.calibrated)}
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def build_engine(spec: BuildSpec, store: EngineStore, allowed_roots: Sequence[Path] = (),
                 progress: ProgressCallback | None = None, quantize: QuantizeSettings = QuantizeSettings()) -> Manifest:
    """Build `spec` into `store` (blocking; run it in a thread). Returns the stored engine's manifest,
    which is the existing one when an engine of that name has the same fingerprint and verifies."""
    report = progress or (lambda stage, fraction, message: None)
    started = time.monotonic()
    report("resolve", 0.0, f"resolving {spec.source}")
    source = resolve_source(spec.source, allowed_roots)
    dtype = spec.dtype or _own_dtype(source)
    report("resolve", 0.02, f"hashing {len(source.files)} source file(s)")
    identity = source.identity()
    fp = fingerprint(identity, dtype, spec, quantize)
    existing = _reusable(store, spec.name, fp, report)
    if existing is not None:
        log.info("build_reused", name=spec.name, fingerprint=fp, seconds=round(time.monotonic() - started, 3))
        return existing
    if spec.quantization is None:
        manifest = _convert(spec, source, dtype, fp, store, report)
    else:
        manifest = _convert_quantized(spec, source, identity, dtype, fp, store, report, quantize)
    log.info("build_finished", name=spec.name, fingerprint=fp, dtype=dtype, bytes=manifest.size_bytes,
             seconds=round(time.monotonic() - started, 3))
    return manifest


def _own_dtype(source: Source) -> str:
    own = source.own_dtype()
    return own if own in DTYPES else DEFAULT_DTYPE


def _reusable(store: EngineStore, name: str, fp: str, report: ProgressCallback) -> Manifest | None:
    if not store.exists(name):
        return None
    try:
        if store.manifest(name).fingerprint != fp:
            log.info("build_replaces", name=name, reason="different fingerprint")
            return None
        # Still "resolve": whether to build at all is undecided until the files verify.
        report("resolve", 0.03, "an engine with this fingerprint exists; verifying its files")
        manifest = store.verify(name)
    except EngineCorruptError as e:  # never hand out a damaged engine: build it again
        log.warning("build_replaces", name=name, reason=str(e))
        return None
    report("checksum", 0.95, "up to date: same fingerprint, every file verified; nothing rebuilt")
    return manifest


def _open_source(spec: BuildSpec, source: Source) -> Checkpoint:
    try:
        return open_checkpoint(str(source.path))
    except InvalidParameterError as e:  # the engine names it `model`; the request calls it `source`
        raise BuildInputError("source", f"{spec.source}: {e.problem}") from e


def _convert(spec: BuildSpec, source: Source, dtype: str, fp: str, store: EngineStore,
             report: ProgressCallback) -> Manifest:
    report("convert", 0.05, f"opening the {source.kind} checkpoint")
    ckpt = _open_source(spec, source)
    max_seq_len = _resolve_max_seq_len(spec.max_seq_len, ckpt.config)
    report("convert", 0.15, "loading the tokenizer")
    tokenizer = load_tokenizer(ckpt)
    staging = store.new_staging_dir(spec.name)
    try:
        report("convert", 0.45, f"converting weights to {dtype}")
        export_hf_folder(_with_layer_progress(ckpt, report, 0.45, 0.75), tokenizer, staging, DTYPES[dtype])
        # The exported config's model_type, not the source's: Baichuan is written as plain Llama.
        architecture = json.loads((staging / "config.json").read_text())["model_type"]
        report("checksum", 0.80, "hashing every file and committing into the store")
        manifest = store.commit(staging, Manifest(
            name=spec.name, fingerprint=fp, architecture=architecture, dtype=dtype,
            quantization={"scheme": "none"}, max_batch_size=spec.max_batch_size,
            max_seq_len=max_seq_len, source=spec.source))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when commit renamed it into place
        raise
    report("checksum", 0.95, f"stored {len(manifest.files)} files, {manifest.size_bytes} bytes")
    return manifest


def _convert_quantized(spec: BuildSpec, source: Source, identity: dict, dtype: str, fp: str, store: EngineStore,
                       report: ProgressCallback, quantize: QuantizeSettings) -> Manifest:
    report("convert", 0.02, f"opening the {source.kind} checkpoint")
    ckpt = _open_source(spec, source)
    if spec.quantization.embedding and ckpt.config.tie_word_embeddings and not spec.quantization.lm_head:
        raise BuildInputError("quantization_options.quantize_embedding",
                              f"{spec.source}: ties its lm_head to the embedding; quantize the lm_head too "
                              "(quantize_lm_head), or the float head would keep the table's full size")
    tokenizer = load_tokenizer(ckpt)
    if tokenizer is None:
        raise BuildInputError("source", f"{spec.source}: has no tokenizer files; a quantized build calibrates and "
                                        "scores on text, so it needs the checkpoint's tokenizer")
    return convert_quantized(
        name=spec.name, source=spec.source, source_identity=identity, ckpt=ckpt, tokenizer=tokenizer, dtype=dtype,
        fp=fp, max_batch_size=spec.max_batch_size,
        max_seq_len=_resolve_max_seq_len(spec.max_seq_len, ckpt.config), config=spec.quantization,
        store=store, report=report, settings=quantize)


def _resolve_max_seq_len(asked: int, cfg: ModelConfig) -> int:
    # As Engine does: sliding-window attention is not implemented, so the window caps the context.
    limit = min(cfg.max_position_embeddings, cfg.sliding_window or cfg.max_position_embeddings)
    if asked > limit:
        raise BuildInputError("max_seq_len", f"{asked} exceeds the model's context length {limit}")
    return asked or limit


def _with_layer_progress(ckpt: Checkpoint, report: ProgressCallback, start: float, end: float) -> Checkpoint:
    """The same checkpoint, reporting each decoder layer as its first tensor is read. Counting distinct
    layers keeps the fraction monotonic whatever order the file stores them in ("layers.10" < "layers.2")."""
    num_layers = max(ckpt.config.num_layers, 1)

    def read_weights() -> Iterator[tuple[str, torch.Tensor]]:
        seen: set[str] = set()
        for name, tensor in ckpt.read_weights():
            parts = name.split(".")
            if len(parts) > 3 and parts[1] == "layers" and parts[2] not in seen:
                seen.add(parts[2])
                report("convert", start + (end - start) * (len(seen) - 1) / num_layers,
                       f"converting layer {len(seen)}/{num_layers}")
            yield name, tensor

    return dataclasses.replace(ckpt, read_weights=read_weights)
