"""The text that quantization calibrates on and the quality report scores, shipped in builder/data/
(public-domain works; SOURCES.md names them). Deterministic: the same text, tokenizer and settings
always give the same samples, and so the same engine fingerprint."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
CALIBRATION_FILE = DATA_DIR / "calibration.txt"
EVALUATION_FILE = DATA_DIR / "evaluation.txt"


@dataclass(frozen=True)
class CalibrationSettings:
    num_samples: int = 32  # sequences
    seq_len: int = 256  # tokens each: 8k tokens in all, enough for per-channel statistics of a 7B model


def fingerprint(settings: CalibrationSettings, files: tuple[Path, ...] = (CALIBRATION_FILE,)) -> str:
    h = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    for file in files:
        h.update(hashlib.sha256(file.read_bytes()).digest())
    return h.hexdigest()


def contiguous_windows(token_ids: list[int], num: int, length: int) -> torch.Tensor:
    """The first `num` non-overlapping windows of `length` tokens: [num, length] (fewer rows when
    the text is short)."""
    num = min(num, len(token_ids) // length)
    if num == 0:
        raise ValueError(f"the text has {len(token_ids)} tokens, fewer than one window of {length}")
    return torch.tensor(token_ids[: num * length]).view(num, length)


def calibration_ids(tokenizer: Any, settings: CalibrationSettings) -> torch.Tensor:
    """[num_samples, seq_len] token ids of the calibration text."""
    ids = tokenizer.encode(CALIBRATION_FILE.read_text(encoding="utf-8"), add_special_tokens=False)
    return contiguous_windows(ids, settings.num_samples, settings.seq_len)


def evaluation_ids(tokenizer: Any) -> list[int]:
    return tokenizer.encode(EVALUATION_FILE.read_text(encoding="utf-8"), add_special_tokens=False)
