"""How the builder quantizes: where it computes, how much calibration and evaluation text it uses.
From the builder's settings; part of every quantized engine's fingerprint (they change its values or
its quality report)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from builder.quantize.calibration import EVALUATION_FILE, CalibrationSettings, fingerprint


@dataclass(frozen=True)
class EvalSettings:
    window: int = 512  # tokens per perplexity window
    max_windows: int = 16  # at most this many windows of the evaluation text (8k tokens)
    windows_per_batch: int = 2  # bounds the [tokens, vocab] logits held at once
    greedy_tokens: int = 32  # continuation length per prompt


@dataclass(frozen=True)
class QuantizeSettings:
    device: str = "cpu"  # where the model is quantized and scored: "cpu", "cuda" or "cuda:N"
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    evaluation: EvalSettings = field(default_factory=EvalSettings)

    def identity(self, calibrated: bool) -> dict:
        evaluation = hashlib.sha256(json.dumps(asdict(self.evaluation), sort_keys=True).encode())
        evaluation.update(EVALUATION_FILE.read_bytes())
        return {"calibration": fingerprint(self.calibration) if calibrated else "",
                "evaluation": evaluation.hexdigest()}
