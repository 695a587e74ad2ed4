"""BENCHMARKS ONLY: an engine that runs no model, for measuring the control plane (gateway, router,
Redis, worker loop) apart from the model.

It has the part of engine.Engine's interface the worker uses (add_request, step, abort,
has_unfinished, stats, config.max_batch_size) and in-flight batching semantics: up to max_batch_size
requests run at once, each step costs `step_ms` (a sleep) and advances every running request by one
token, new requests join at the next step, the rest wait FIFO. Token ids are a deterministic function
of the prompt and the position; each token's text is " t<id>". Output ends at max_tokens ("length"),
at max_seq_len, or at a stop token id once min_tokens are out ("stop"); it never emits eos, and stop
strings are not matched. The engine package knows nothing of it: it lives at the worker's edge and
is chosen only by `--engine-kind synthetic-benchmark-only`.
"""
from __future__ import annotations

import time
import zlib
from collections import deque
from dataclasses import dataclass, field

from engine.errors import InvalidParameterError
from engine.outputs import EngineStats, RequestOutput, TokenLogprob, Usage
from engine.sampling_params import SamplingParams

ENGINE_KIND = "synthetic-benchmark-only"
BLOCK_SIZE = 16  # tokens per pretend KV block, as stats() reports them


@dataclass(frozen=True)
class SyntheticEngineConfig:
    max_batch_size: int = 64
    max_seq_len: int = 4096
    step_ms: float = 2.0  # the cost of one step (all running requests advance one token)
    vocab_size: int = 32000

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise InvalidParameterError("max_batch_size", f"must be >= 1, got {self.max_batch_size}")
        if self.max_seq_len < 2:
            raise InvalidParameterError("max_seq_len", f"must be >= 2, got {self.max_seq_len}")
        if self.step_ms < 0:
            raise InvalidParameterError("step_ms", f"must be >= 0, got {self.step_ms}")


@dataclass
class _Request:
    request_id: str
    prompt_len: int
    params: SamplingParams
    base: int  # the prompt's digest: token ids depend on it and the position only
    output: list[int] = field(default_factory=list)


def synthetic_token(base: int, position: int, vocab_size: int) -> int:
    return (base + 7919 * position) % vocab_size


class SyntheticEngine:
    kind = ENGINE_KIND

    def __init__(self, config: SyntheticEngineConfig | None = None):
        self.config = config or SyntheticEngineConfig()
        self.max_seq_len = self.config.max_seq_len
        self._running: dict[str, _Request] = {}
        self._waiting: deque[_Request] = deque()
        self._aborted: list[RequestOutput] = []
        self.steps = 0

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None) -> None:
        params = params or SamplingParams()
        if request_id in self._running or any(r.request_id == request_id for r in self._waiting):
            raise InvalidParameterError("request_id", f"{request_id!r} is already running")
        token_ids = list(prompt.encode()) if isinstance(prompt, str) else list(prompt)
        if not token_ids:
            raise InvalidParameterError("prompt", "is empty")
        if len(token_ids) >= self.max_seq_len:
            raise InvalidParameterError("prompt", f"{len(token_ids)} tokens leave no room to generate within "
                                                  f"max_seq_len={self.max_seq_len}")
        base = zlib.crc32(repr(token_ids).encode())
        self._waiting.append(_Request(request_id, len(token_ids), params, base))

    def step(self) -> list[RequestOutput]:
        outputs, self._aborted = self._aborted, []
        while self._waiting and len(self._running) < self.config.max_batch_size:
            req = self._waiting.popleft()
            self._running[req.request_id] = req
        if not self._running:
            return outputs
        if self.config.step_ms > 0:
            time.sleep(self.config.step_ms / 1000)
        self.steps += 1
        for req in list(self._running.values()):
            outputs.append(self._advance(req))
        return outputs

    def abort(self, request_id: str) -> bool:
        req = self._running.pop(request_id, None)
        if req is None:
            req = next((r for r in self._waiting if r.request_id == request_id), None)
            if req is None:
                return False
            self._waiting.remove(req)
        self._aborted.append(RequestOutput(request_id, [], "", None, True, "abort", self._usage(req)))
        return True

    def has_unfinished(self) -> bool:
        return bool(self._running) or bool(self._waiting) or bool(self._aborted)

    def stats(self) -> EngineStats:
        # A pool sized for a full batch of max_seq_len sequences, in blocks of BLOCK_SIZE tokens: it
        # never runs short, so the worker's KV watermark never holds requests back.
        total = self.config.max_batch_size * -(-self.max_seq_len // BLOCK_SIZE)
        used = sum(-(-(r.prompt_len + len(r.output)) // BLOCK_SIZE) for r in self._running.values())
        return EngineStats(running=len(self._running), waiting=len(self._waiting), preempted=0, kv_blocks_used=used,
                           kv_blocks_free=total - used, kv_blocks_total=total)

    def _advance(self, req: _Request) -> RequestOutput:
        p = req.params
        token = synthetic_token(req.base, len(req.output), self.config.vocab_size)
        req.output.append(token)
        reason = None
        if token in p.stop_token_ids and len(req.output) >= p.min_tokens:
            reason = "stop"
        elif len(req.output) >= p.max_tokens or req.prompt_len + len(req.output) >= self.max_seq_len:
            reason = "length"
        if reason is not None:
            del self._running[req.request_id]
        text = f" t{token}" if p.detokenize and reason != "stop" else ""
        logprobs = [TokenLogprob(token, 0.0)] if p.logprobs else None
        return RequestOutput(req.request_id, [token], text, logprobs, reason is not None, reason, self._usage(req))

    @staticmethod
    def _usage(req: _Request) -> Usage:
        return Usage(prompt_tokens=req.prompt_len, completion_tokens=len(req.output))
