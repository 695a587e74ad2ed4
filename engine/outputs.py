"""What the engine hands back each step and at the end of an offline generate()."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["length", "stop", "eos", "abort"]


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float  # log-probability under the model's raw distribution (before penalties/temperature)
    top: tuple[tuple[int, float], ...] = ()  # the top-n (token_id, logprob) pairs, when asked for


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class RequestOutput:
    """One step's news about one request."""

    request_id: str
    new_token_ids: list[int]
    text_delta: str
    logprobs: list[TokenLogprob] | None
    finished: bool
    finish_reason: FinishReason | None
    usage: Usage


@dataclass
class CompletionOutput:
    """A whole finished request, as offline generate() returns it."""

    request_id: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None

    def extend(self, out: RequestOutput) -> None:
        self.text += out.text_delta
        self.token_ids += out.new_token_ids
        if out.logprobs is not None:
            self.logprobs = (self.logprobs or []) + out.logprobs
        self.finish_reason, self.usage = out.finish_reason, out.usage


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    preempted: int  # preemptions since start (a sequence preempted twice counts twice)
    kv_blocks_used: int
    kv_blocks_free: int
    kv_blocks_total: int
