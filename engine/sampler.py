"""Picks each sequence's next token from its logits, honouring its own SamplingParams.

Rows are independent: a sequence's draw depends only on its logits, its parameters and its own
random generator, so a seeded request samples the same tokens whatever else is in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.outputs import TokenLogprob
from engine.sequence import Sequence
from engine.transfer import to_device


@dataclass(frozen=True)
class SamplingRow:
    seq: Sequence
    generator: torch.Generator


@dataclass
class SampledTokens:
    """One step's draws, possibly still being computed on the device: tokens() waits for them.

    Everything the host needs is computed and queued for copying when sampling is launched, so the next
    step can be launched before these tokens are read, without overwriting what they were drawn from."""

    token_ids: torch.Tensor  # [rows] int64 on the model's device: what the next step may read as input
    rows: list[SamplingRow]
    _host: list[torch.Tensor]  # token ids, then (if any row asked) chosen logprobs, top values, top ids
    _ready: torch.cuda.Event | None  # recorded after the copies to the host; None on a CPU

    def tokens(self) -> list[TokenLogprob]:
        if self._ready is not None:
            self._ready.synchronize()
        token_ids = self._host[0].tolist()
        if len(self._host) == 1:
            return [TokenLogprob(tok, float("nan")) for tok in token_ids]
        chosen, top_vals, top_ids = (t.tolist() for t in self._host[1:])
        out = []
        for i, (tok, row) in enumerate(zip(token_ids, self.rows)):
            p = row.seq.params
            if not p.logprobs:
                out.append(TokenLogprob(tok, float("nan")))
                continue
            n = p.top_logprobs
            out.append(TokenLogprob(tok, chosen[i], tuple(zip(top_ids[i][:n], top_vals[i][:n]))))
        return out


class Sampler:
    def __init__(self, eos_token_ids: tuple[int, ...]):
        self.eos_token_ids = eos_token_ids

    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> list[TokenLogprob]:
        return self.sample(logits, rows).tokens()

    def sample(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SampledTokens:
        """Launch the draws of one step without waiting for them (no host sync)."""
        # logits: [rows, vocab] float32
        raw_logprobs = torch.log_softmax(logits, dim=-1) if any(r.seq.params.logprobs for r in rows) else None
        penalized = [i for i, r in enumerate(rows) if _has_penalties(r.seq)]
        if penalized:
            logits = logits.clone()
            for i in penalized:
                self._apply_penalties(logits[i], rows[i].seq)
        bans = self._early_stop_bans(rows)
        greedy = [i for i, r in enumerate(rows) if r.seq.params.greedy]
        if len(greedy) == len(rows) and logits.is_cuda:  # the common serving case: one launch
            from engine.layers.triton.argmax import greedy_tokens

            token_ids = greedy_tokens(logits, _banned_table(bans, logits.device))
        else:
            if any(bans):  # every row's masked stop tokens in one indexed write
                logits = logits if penalized else logits.clone()
                pairs = [[i, t] for i, banned in enumerate(bans) for t in banned]
                rows_idx, token_idx = _on_device(pairs, logits.device).T
                # A device scalar: a Python float would be copied from the host, blocking (sync debug mode).
                logits.index_put_((rows_idx, token_idx), logits.new_full((), float("-inf")))
            token_ids = self._draw(logits, rows, greedy)
        device_side = [token_ids]
        if raw_logprobs is not None:
            top = max(r.seq.params.top_logprobs for r in rows)
            top_vals, top_ids = raw_logprobs.topk(top, dim=-1)
            device_side += [raw_logprobs.gather(1, token_ids[:, None])[:, 0], top_vals, top_ids]
        return SampledTokens(token_ids, rows, *_copy_to_host(device_side))

    def _draw(self, logits: torch.Tensor, rows: list[SamplingRow], greedy: list[int]) -> torch.Tensor:
        if len(greedy) == len(rows):
            return logits.argmax(dim=-1)
        token_ids = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        if greedy:
            greedy_rows = _on_device(greedy, logits.device)
            token_ids[greedy_rows] = logits[greedy_rows].argmax(dim=-1)
        for i, row in enumerate(rows):
            if not row.seq.params.greedy:
                token_ids[i] = self._sample(logits[i], row)
        return token_ids

    def _early_stop_bans(self, rows: list[SamplingRow]) -> list[list[int]]:
        """Per row, the tokens it must not sample: its stop and EOS tokens before min_tokens."""
        bans = []
        for row in rows:
            p = row.seq.params
            early = len(row.seq.output_token_ids) < p.min_tokens
            bans.append(list(p.stop_token_ids) + ([] if p.ignore_eos else list(self.eos_token_ids)) if early else [])
        return bans

    @staticmethod
    def _apply_penalties(logits: torch.Tensor, seq: Sequence) -> None:
        p = seq.params
        if p.repetition_penalty != 1.0:
            seen = _on_device(sorted(set(seq.all_token_ids)), logits.device)
            vals = logits[seen]
            logits[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and seq.output_token_ids:
            ids, counts = _on_device(seq.output_token_ids, logits.device).unique(return_counts=True)
            logits[ids] -= p.frequency_penalty * counts.to(logits.dtype) + p.presence_penalty

    @staticmethod
    def _sample(logits: torch.Tensor, row: SamplingRow) -> torch.Tensor:
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
        return (probs / noise).argmax()  # stays on the device: no sync per row


def _banned_table(bans: list[list[int]], device: torch.device) -> torch.Tensor | None:
    """Per-row bans as a [rows, most per row] table padded with -1, on `device`; None if there are none."""
    width = max(map(len, bans), default=0)
    if width == 0:
        return None
    return to_device(torch.tensor([b + [-1] * (width - len(b)) for b in bans], dtype=torch.long), device)


def _on_device(values: list, device: torch.device) -> torch.Tensor:
    """int64 indices on `device`, copied without waiting for the step launched ahead of this one
    (torch.tensor(values, device=...) would: engine/transfer.py)."""
    return to_device(torch.tensor(values, dtype=torch.long), device)


def _copy_to_host(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.cuda.Event | None]:
    """Queue copies of device tensors into pinned host memory and an event that marks them done."""
    if tensors[0].device.type != "cuda":
        return tensors, None
    host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for t in tensors]
    ready = torch.cuda.Event()
    ready.record()
    return host, ready


def _has_penalties(seq: Sequence) -> bool:
    p = seq.params
    return p.repetition_penalty != 1.0 or bool((p.presence_penalty or p.frequency_penalty) and seq.output_token_ids)
