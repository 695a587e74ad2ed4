"""Picks each sequence's next token from its logits, honouring its own SamplingParams.

Rows are independent: a sequence's draw depends only on its logits, its parameters and its own
random generator, so a seeded request samples the same tokens whatever else is in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.outputs import TokenLogprob
from engine.sequence import Sequence


@dataclass(frozen=True)
class SamplingRow:
    seq: Sequence
    generator: torch.Generator


class Sampler:
    def __init__(self, eos_token_ids: tuple[int, ...]):
        self.eos_token_ids = eos_token_ids

    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> list[TokenLogprob]:
        # logits: [rows, vocab] float32
        raw_logprobs = torch.log_softmax(logits, dim=-1) if any(r.seq.params.logprobs for r in rows) else None
        penalized = [i for i, r in enumerate(rows) if _has_penalties(r.seq)]
        forbidden = self._forbidden_early_stops(rows)
        if penalized or forbidden[0]:
            logits = logits.clone()
            for i in penalized:
                self._apply_penalties(logits[i], rows[i].seq)
            if forbidden[0]:  # every row's masked stop tokens in one indexed write
                logits[forbidden] = float("-inf")
        greedy = [i for i, r in enumerate(rows) if r.seq.params.greedy]
        if len(greedy) == len(rows):  # the common serving case: one kernel, one copy to the host
            return self._with_logprobs(logits.argmax(dim=-1).tolist(), raw_logprobs, rows)
        token_ids = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        if greedy:
            token_ids[greedy] = logits[greedy].argmax(dim=-1)
        for i, row in enumerate(rows):
            if not row.seq.params.greedy:
                token_ids[i] = self._sample(logits[i], row)
        return self._with_logprobs(token_ids.tolist(), raw_logprobs, rows)

    def _forbidden_early_stops(self, rows: list[SamplingRow]) -> tuple[list[int], list[int]]:
        """(row, token) pairs that must not be sampled: stop and EOS tokens before min_tokens."""
        row_idx: list[int] = []
        token_idx: list[int] = []
        for i, row in enumerate(rows):
            p = row.seq.params
            if len(row.seq.output_token_ids) < p.min_tokens:
                stops = list(p.stop_token_ids) + ([] if p.ignore_eos else list(self.eos_token_ids))
                row_idx += [i] * len(stops)
                token_idx += stops
        return row_idx, token_idx

    @staticmethod
    def _apply_penalties(logits: torch.Tensor, seq: Sequence) -> None:
        p = seq.params
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(seq.all_token_ids)), device=logits.device)
            vals = logits[seen]
            logits[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and seq.output_token_ids:
            ids, counts = torch.tensor(seq.output_token_ids, device=logits.device).unique(return_counts=True)
            logits[ids] -= p.frequency_penalty * counts.to(logits.dtype) + p.presence_penalty

    @staticmethod
    def _sample(logits: torch.Tensor, row: SamplingRow) -> int:
        p = row.seq.params
        logits = logits / p.temperature
        if p.top_k > 0 and p.top_k < logits.numel():
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            drop = (sorted_probs.cumsum(0) - sorted_probs) >= p.top_p
            probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
        if p.min_p > 0.0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        # Exponential race (Gumbel-max in another form): argmax(p / E), E ~ Exp(1), is a draw from p.
        noise = torch.empty_like(probs).exponential_(generator=row.generator)
        return int((probs / noise).argmax())

    @staticmethod
    def _with_logprobs(token_ids: list[int], raw: torch.Tensor | None, rows: list[SamplingRow]) -> list[TokenLogprob]:
        out = []
        for i, (tok, row) in enumerate(zip(token_ids, rows)):
            p = row.seq.params
            if raw is None or not p.logprobs:
                out.append(TokenLogprob(tok, float("nan")))
                continue
            top: tuple[tuple[int, float], ...] = ()
            if p.top_logprobs:
                vals, ids = raw[i].topk(p.top_logprobs)
                top = tuple(zip(ids.tolist(), vals.tolist()))
            out.append(TokenLogprob(tok, float(raw[i, tok]), top))
        return out


def _has_penalties(seq: Sequence) -> bool:
    p = seq.params
    return p.repetition_penalty != 1.0 or bool((p.presence_penalty or p.frequency_penalty) and seq.output_token_ids)
