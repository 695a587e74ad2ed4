"""Per-request generation parameters, validated once when the request is added."""
from __future__ import annotations

from dataclasses import dataclass

from engine.errors import InvalidParameterError

MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop.

    temperature == 0 means greedy. Penalties follow the usual definitions: `repetition_penalty`
    (HF/CTRL style, over prompt and output tokens, 1.0 = off), `presence_penalty` and
    `frequency_penalty` (OpenAI style, over output tokens, 0.0 = off).
    """

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    skip_special_tokens: bool = True
    # False: outputs carry token ids only, no text (as vLLM's detokenize=False): for callers that decode
    # elsewhere, and benchmarks that measure the engine, as TensorRT-LLM's do. Stop strings need text.
    detokenize: bool = True

    def __post_init__(self) -> None:
        # Lists are accepted for convenience; frozen storage is a tuple.
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        self.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def validate(self) -> None:
        _check(_is_int(self.max_tokens) and self.max_tokens > 0,
               "max_tokens", f"must be an integer > 0, got {self.max_tokens!r}")
        _check(_is_int(self.min_tokens) and 0 <= self.min_tokens <= self.max_tokens,
               "min_tokens", f"must be an integer in [0, max_tokens={self.max_tokens}], got {self.min_tokens!r}")
        _check(_is_num(self.temperature) and self.temperature >= 0,
               "temperature", f"must be >= 0, got {self.temperature!r}")
        _check(_is_int(self.top_k) and self.top_k >= 0,
               "top_k", f"must be an integer >= 0 (0 = off), got {self.top_k!r}")
        _check(_is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p!r}")
        _check(_is_num(self.min_p) and 0 <= self.min_p <= 1, "min_p", f"must be in [0, 1], got {self.min_p!r}")
        _check(_is_num(self.repetition_penalty) and self.repetition_penalty > 0,
               "repetition_penalty", f"must be > 0 (1.0 = off), got {self.repetition_penalty!r}")
        _check(_is_num(self.presence_penalty) and -2 <= self.presence_penalty <= 2,
               "presence_penalty", f"must be in [-2, 2], got {self.presence_penalty!r}")
        _check(_is_num(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
               "frequency_penalty", f"must be in [-2, 2], got {self.frequency_penalty!r}")
        _check(self.seed is None or (_is_int(self.seed) and 0 <= self.seed < 2**63),
               "seed", f"must be an integer in [0, 2**63), got {self.seed!r}")
        _check(len(self.stop) <= MAX_STOP_STRINGS,
               "stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        for s in self.stop:
            _check(isinstance(s, str) and 0 < len(s) <= MAX_STOP_STRING_CHARS,
                   "stop", f"each stop string must be a non-empty string of at most {MAX_STOP_STRING_CHARS} "
                           f"characters, got {s!r}")
        _check(self.detokenize or not self.stop, "stop", "stop strings need detokenize=True")
        for t in self.stop_token_ids:
            _check(_is_int(t) and t >= 0, "stop_token_ids", f"must be non-negative integers, got {t!r}")
        _check(_is_int(self.top_logprobs) and 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS,
               "top_logprobs", f"must be an integer in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs!r}")


def needs_token_history(params: SamplingParams) -> bool:
    """Whether sampling reads the sequence's previous tokens on the host (its penalties do)."""
    return params.repetition_penalty != 1.0 or bool(params.presence_penalty) or bool(params.frequency_penalty)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # v == v rejects NaN


def _check(ok: bool, field_name: str, problem: str) -> None:
    if not ok:
        raise InvalidParameterError(field_name, problem)
