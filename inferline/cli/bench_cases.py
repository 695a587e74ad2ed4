"""What `inferline bench` runs: the (batch size, input length, output length) grid and its prompts."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterable

from engine import InvalidParameterError


@dataclass(frozen=True)
class Case:
    batch_size: int
    input_len: int
    output_len: int


def parse_batch_sizes(text: str) -> list[int]:
    """"1,8" -> [1, 8]."""
    sizes = [_positive_int(part, "--batch-size", text) for part in text.split(",") if part.strip()]
    if not sizes:
        raise InvalidParameterError("--batch-size", f"expected comma-separated integers like 1,8, got {text!r}")
    return _unique(sizes)


def parse_input_output_len(text: str) -> list[tuple[int, int]]:
    """"32,50;128,50" -> [(32, 50), (128, 50)], as TensorRT-LLM's benchmark spells it."""
    pairs = []
    for chunk in (c for c in text.split(";") if c.strip()):
        parts = chunk.split(",")
        if len(parts) != 2:
            raise InvalidParameterError("--input-output-len", f"each case is IN,OUT (cases separated by ';'), got {chunk!r}")
        pairs.append((_positive_int(parts[0], "--input-output-len", text),
                      _positive_int(parts[1], "--input-output-len", text)))
    if not pairs:
        raise InvalidParameterError("--input-output-len", f"expected cases like 32,50;128,50, got {text!r}")
    return _unique(pairs)


def make_cases(batch_sizes: list[int], io_lens: list[tuple[int, int]]) -> list[Case]:
    # TensorRT-LLM's order: every batch size for one input/output pair, then the next pair.
    return [Case(bs, i, o) for i, o in io_lens for bs in batch_sizes]


def random_prompts(case: Case, vocab_size: int, tokenizer: Any | None, seed: int) -> list[list[int]]:
    """`batch_size` prompts of exactly `input_len` token ids, reproducible for a given seed and case
    (not dependent on which other cases run). Special and added tokens (BOS, EOS, chat markers) are
    avoided: they would make the model stop or behave unlike on text."""
    if tokenizer is not None:
        vocab_size = min(vocab_size, len(tokenizer))
    avoid = _special_ids(tokenizer)
    allowed = [t for t in range(vocab_size) if t not in avoid]
    rng = random.Random(f"{seed}-{case.batch_size}-{case.input_len}")  # str seeds are stable across runs
    return [rng.choices(allowed, k=case.input_len) for _ in range(case.batch_size)]


def _special_ids(tokenizer: Any | None) -> set[int]:
    if tokenizer is None:
        return set()
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids.update(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return ids


def _positive_int(part: str, option: str, whole: str) -> int:
    try:
        value = int(part.strip())
    except ValueError:
        raise InvalidParameterError(option, f"{part.strip()!r} in {whole!r} is not an integer") from None
    if value < 1:
        raise InvalidParameterError(option, f"values must be >= 1, got {value} in {whole!r}")
    return value


def _unique(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))
