"""A quantized build: load the source as a float32 model on the build device, score it, quantize it
layer by layer (calibrating where the scheme needs it), score it again, and write the quantized model
into the store with its quality report in the manifest.

Reference scores (the unquantized model's) depend only on the source and the evaluation settings, so
they are kept in the store's .cache and computed once per source, not once per scheme.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import structlog
import torch

from builder.quality import ModelScores, QualityReport, score_quantized, score_reference, weight_bytes
from builder.quantize import quantize_model
from builder.quantize.calibration import calibration_ids, evaluation_ids, fingerprint
from builder.quantize.settings import QuantizeSettings
from engine.config import DTYPES
from engine.layers.quantization import QuantizationConfig
from engine.loader import Checkpoint
from engine.loader.export import export_model
from engine.model_runner import load_model
from inferline.engine_store import EngineStore, Manifest
from inferline.memory import PeakMemoryTracker, release_memory

log = structlog.get_logger(__name__)

ProgressCallback = Callable[[str, float, str], None]
COMPUTE_DTYPE = torch.float32  # quantization math and both scorings; the engine is stored in the build's dtype


def convert_quantized(*, name: str, source: str, source_identity: dict, ckpt: Checkpoint, tokenizer: Any, dtype: str,
                      fp: str, max_batch_size: int, max_seq_len: int, config: QuantizationConfig,
                      store: EngineStore, report: ProgressCallback, settings: QuantizeSettings) -> Manifest:
    device = torch.device(settings.device)
    eval_ids = evaluation_ids(tokenizer)
    # Longest sequence the scoring and calibration run (the fixed prompts are well under 64 tokens).
    positions = max(settings.evaluation.window, settings.calibration.seq_len, 64 + settings.evaluation.greedy_tokens)
    with PeakMemoryTracker(device) as memory:
        report("convert", 0.05, f"loading the model on {device} for {config.scheme} quantization")
        model = load_model(ckpt, COMPUTE_DTYPE, device, positions, "torch_paged")
        reference_bytes = weight_bytes(model) * DTYPES[dtype].itemsize // COMPUTE_DTYPE.itemsize
        report("convert", 0.15, "scoring the unquantized model (perplexity, greedy tokens)")
        reference = _cached_reference(store, source_identity, settings,
                                      lambda: score_reference(model, tokenizer, eval_ids, settings.evaluation))
        calibration = None
        calibration_fp = ""
        if config.calibrated:
            calibration = calibration_ids(tokenizer, settings.calibration)
            calibration_fp = fingerprint(settings.calibration)
        config = QuantizationConfig.from_dict({**config.to_dict(), "calibration": calibration_fp})
        started = time.monotonic()

        def layer_done(done: int, total: int) -> None:
            report("convert", 0.3 + 0.4 * done / total, f"{config.scheme}: quantized layer {done}/{total}")

        quantize_model(model, config, calibration, layer_done)
        quantize_seconds = time.monotonic() - started
        report("convert", 0.72, "scoring the quantized model")
        scores = score_quantized(model, tokenizer, eval_ids, settings.evaluation, reference)
        staging = store.new_staging_dir(name)
        try:
            report("convert", 0.8, "writing the quantized engine")
            export_model(model, tokenizer, staging, DTYPES[dtype], config)
            peak = memory.checkpoint()
            quality = QualityReport(
                perplexity=scores.perplexity, reference_perplexity=reference.perplexity,
                perplexity_change=scores.perplexity / reference.perplexity - 1, greedy_agreement=scores.greedy_agreement,
                eval_tokens=scores.eval_tokens, weight_bytes=_stored_weight_bytes(staging),
                reference_weight_bytes=reference_bytes, peak_build_memory_bytes=peak,
                calibration_fingerprint=calibration_fp, quantize_seconds=round(quantize_seconds, 3))
            log.info("quality_report", name=name, **quality.to_dict())
            report("checksum", 0.85, f"perplexity {scores.perplexity:.3f} vs {reference.perplexity:.3f} unquantized "
                                     f"({quality.perplexity_change:+.2%}), greedy agreement {scores.greedy_agreement:.1%}")
            manifest = store.commit(staging, Manifest(
                name=name, fingerprint=fp, architecture=json.loads((staging / "config.json").read_text())["model_type"],
                dtype=dtype, quantization={**config.to_dict(), "quality": quality.to_dict()},
                max_batch_size=max_batch_size, max_seq_len=max_seq_len, source=source))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            model = None  # dropped before the allocator's cache is given back
            release_memory(device)
    return manifest


def _stored_weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def _cached_reference(store: EngineStore, source_identity: dict, settings: QuantizeSettings,
                      compute: Callable[[], ModelScores]) -> ModelScores:
    key = hashlib.sha256(json.dumps({"source": source_identity, "evaluation": settings.identity(False)["evaluation"],
                                     "device": settings.device}, sort_keys=True).encode()).hexdigest()
    file = store.root / ".cache" / f"reference-{key}.json"
    try:
        return ModelScores(**json.loads(file.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    scores = compute()
    file.parent.mkdir(exist_ok=True)
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(scores)))
    tmp.replace(file)
    return scores
