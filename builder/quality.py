"""What a quantized build cost in quality, measured on the builder's device with the engine's own
model code: perplexity on the held-out evaluation text and greedy-token agreement over a fixed prompt
set, each for the unquantized model and for the quantized one.

Greedy agreement is teacher-forced: the unquantized model generates a greedy continuation of each
prompt; the quantized model reads prompt + continuation once and we count the positions where its
argmax is the same token. Unlike comparing two free-running generations, one early difference does
not make every later token count as a miss.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from builder.quantize.calibration import contiguous_windows
from builder.quantize.layerwise import make_batch
from builder.quantize.settings import EvalSettings

PROMPTS = (
    "The capital of France is",
    "Water boils at a temperature of",
    "In the beginning of the story, the young woman",
    "A recipe for a simple bread needs flour, water,",
    "The theory of relativity says that",
    "def fibonacci(n):\n    ",
    "The three primary colours are",
    "Once upon a time, in a small village by the sea,",
)


@dataclass(frozen=True)
class ModelScores:
    perplexity: float
    eval_tokens: int
    greedy: list[list[int]]  # per prompt: prompt ids + greedy continuation (the reference's)
    greedy_agreement: float = 1.0


@torch.no_grad()
def logits_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """ids [N, L] -> logits [N, L, vocab] float32, each row a sequence of its own."""
    n, length = ids.shape
    batch = make_batch(model, n, length)
    device = model.device
    hidden = model(ids.to(device).flatten(), batch.positions, [batch.kv_cache] * len(model.layers), batch.meta)
    return model.compute_logits(hidden).view(n, length, -1)


@torch.no_grad()
def perplexity(model: nn.Module, token_ids: list[int], settings: EvalSettings) -> tuple[float, int]:
    """exp(mean next-token NLL) over non-overlapping windows; returns (perplexity, tokens scored)."""
    windows = contiguous_windows(token_ids, settings.max_windows, settings.window)
    nll, count = 0.0, 0
    for chunk in windows.split(settings.windows_per_batch):
        logits = logits_of(model, chunk)
        targets = chunk[:, 1:].to(logits.device)
        nll += F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    return math.exp(nll / count), count


@torch.no_grad()
def greedy_continuations(model: nn.Module, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    out = []
    for prompt in prompts:
        ids = list(prompt)
        for _ in range(new_tokens):  # recomputes the prefix each step: a few hundred short forwards
            ids.append(int(logits_of(model, torch.tensor([ids]))[0, -1].argmax()))
        out.append(ids)
    return out


@torch.no_grad()
def agreement(model: nn.Module, reference: list[list[int]], prompt_lens: list[int]) -> float:
    same = total = 0
    for ids, start in zip(reference, prompt_lens):
        predicted = logits_of(model, torch.tensor([ids]))[0, start - 1:-1].argmax(-1).cpu()
        same += int((predicted == torch.tensor(ids[start:])).sum())
        total += len(ids) - start
    return same / total


def prompt_ids(tokenizer: Any) -> list[list[int]]:
    return [tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]


def score_reference(model: nn.Module, tokenizer: Any, eval_ids: list[int], settings: EvalSettings) -> ModelScores:
    ppl, tokens = perplexity(model, eval_ids, settings)
    return ModelScores(ppl, tokens, greedy_continuations(model, prompt_ids(tokenizer), settings.greedy_tokens))


def score_quantized(model: nn.Module, tokenizer: Any, eval_ids: list[int], settings: EvalSettings,
                    reference: ModelScores) -> ModelScores:
    ppl, tokens = perplexity(model, eval_ids, settings)
    lens = [len(p) for p in prompt_ids(tokenizer)]
    return ModelScores(ppl, tokens, [], agreement(model, reference.greedy, lens))


@dataclass(frozen=True)
class QualityReport:
    perplexity: float
    reference_perplexity: float
    perplexity_change: float
    greedy_agreement: float
    eval_tokens: int
    weight_bytes: int
    reference_weight_bytes: int
    peak_build_memory_bytes: int
    calibration_fingerprint: str
    quantize_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter; parameters() yields a tied (shared) tensor once."""
    return sum(p.numel() * p.element_size() for p in model.parameters())
