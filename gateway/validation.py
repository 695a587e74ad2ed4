"""GenerateRequest -> RouteRequest: every check the gateway can make before queueing, each failure an
INVALID_ARGUMENT whose message starts with the field it is about (the engine's convention,
`field: problem`), so the worker never sees a request it would refuse."""
from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass

from grpc_interceptor.exceptions import InvalidArgument
from jinja2 import TemplateError

from engine.errors import InvalidParameterError
from engine.sampling_params import SamplingParams
from gateway.settings import GatewaySettings
from gateway.tokenizers import EngineTokenizer, EngineTokenizers
from inferline.sampling import sampling_params_from_proto
from inferline.v1 import common_pb2, generate_pb2, router_pb2

ROLES = ("system", "user", "assistant")
# Request ids end up in Redis keys, log lines and metadata: keep them short and unambiguous.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
INLINE_TOKENIZE_MAX_CHARS = 4096  # prompts up to this long are tokenized on the event loop


@dataclass(frozen=True)
class Limits:
    max_tokens: int
    max_stop_strings: int
    max_prompt_bytes: int

    @classmethod
    def from_settings(cls, s: GatewaySettings) -> Limits:
        return cls(s.max_tokens_limit, s.max_stop_strings, s.max_prompt_bytes)


def request_id_of(request: generate_pb2.GenerateRequest) -> str:
    """The client's id (its idempotency key) when it sent one, else a fresh one."""
    rid = request.request_id
    if not rid:
        return uuid.uuid4().hex
    if not REQUEST_ID_PATTERN.match(rid):
        raise InvalidArgument(f"request_id: must be 1 to 128 characters of A-Z a-z 0-9 . _ : - starting with a "
                              f"letter or digit, got {rid[:64]!r}{'...' if len(rid) > 64 else ''}")
    return rid


def check_input(request: generate_pb2.GenerateRequest, limits: Limits) -> str | list[dict[str, str]]:
    """The prompt text or the chat turns, checked before any tokenizing (cheap checks first)."""
    which = request.WhichOneof("input")
    if which is None:
        raise InvalidArgument("prompt: set exactly one of prompt and messages")
    if which == "prompt":
        if not request.prompt:
            raise InvalidArgument("prompt: is empty")
        _check_bytes("prompt", len(request.prompt.encode("utf-8")), limits)
        return request.prompt
    turns = request.messages.messages
    if not turns:
        raise InvalidArgument("messages: is empty")
    for i, turn in enumerate(turns):
        if turn.role not in ROLES:
            raise InvalidArgument(f"messages[{i}].role: must be one of {', '.join(ROLES)}, got {turn.role[:64]!r}")
    _check_bytes("messages", sum(len(t.content.encode("utf-8")) for t in turns), limits)
    return [{"role": t.role, "content": t.content} for t in turns]


def _chars(text_or_turns: str | list[dict[str, str]]) -> int:
    return len(text_or_turns) if isinstance(text_or_turns, str) else sum(len(t["content"]) for t in text_or_turns)


def _check_bytes(field: str, n: int, limits: Limits) -> None:
    # INVALID_ARGUMENT, not RESOURCE_EXHAUSTED: clients retry the latter (the router's "queue full").
    if n > limits.max_prompt_bytes:
        raise InvalidArgument(f"{field}: {n} bytes of text, more than the limit of {limits.max_prompt_bytes} bytes")


def sampling_params_of(p: common_pb2.SamplingParameters, limits: Limits) -> SamplingParams:
    """Validate by constructing the engine's SamplingParams, so the gateway and the engine accept exactly
    the same values with the same messages; only the gateway's own limits are checked here."""
    if p.max_tokens == 0:
        raise InvalidArgument("max_tokens: is required and must be > 0, got 0")
    if p.max_tokens > limits.max_tokens:
        raise InvalidArgument(f"max_tokens: must be at most {limits.max_tokens} (the gateway's limit), got {p.max_tokens}")
    if len(p.stop) > limits.max_stop_strings:
        raise InvalidArgument(f"stop: at most {limits.max_stop_strings} stop strings, got {len(p.stop)}")
    if p.top_logprobs and not p.logprobs:
        raise InvalidArgument(f"top_logprobs: needs logprobs set to true, got top_logprobs={p.top_logprobs} without it")
    try:
        return sampling_params_from_proto(p)
    except InvalidParameterError as e:
        raise InvalidArgument(str(e)) from e


def tokenize(engine: EngineTokenizer, text_or_turns: str | list[dict[str, str]], wait: bool = True) -> list[int] | None:
    """Token ids as the engine would make them (Engine._tokenize / apply_chat_template). Blocking;
    with wait=False, None instead of waiting for another call's tokenizing to end."""
    if not engine.lock.acquire(blocking=wait):
        return None
    try:
        return _tokenize_locked(engine, text_or_turns)
    finally:
        engine.lock.release()


def _tokenize_locked(engine: EngineTokenizer, text_or_turns: str | list[dict[str, str]]) -> list[int]:
    tok = engine.tokenizer
    if isinstance(text_or_turns, str):
        return list(tok.encode(text_or_turns))
    if not getattr(tok, "chat_template", None):
        raise InvalidArgument(f"messages: engine {engine.name!r} has no chat template; send a prompt instead")
    try:
        text = tok.apply_chat_template(text_or_turns, add_generation_prompt=True, tokenize=False)
    except TemplateError as e:  # templates raise on e.g. roles that do not alternate
        raise InvalidArgument(f"messages: the chat template of {engine.name!r} rejected them: {e}") from e
    return list(tok.encode(text, add_special_tokens=False))


def check_tokens(engine: EngineTokenizer, field: str, token_ids: list[int], params: SamplingParams) -> None:
    n = len(token_ids)
    if n == 0:
        raise InvalidArgument(f"{field}: is empty")
    if n >= engine.max_seq_len:
        raise InvalidArgument(f"{field}: {n} tokens leave no room to generate within "
                              f"max_seq_len={engine.max_seq_len} of {engine.name!r}")
    bad = [t for t in params.stop_token_ids if t >= engine.vocab_size]
    if bad:
        raise InvalidArgument(f"stop_token_ids: must be < vocab size {engine.vocab_size}, got {bad[:5]}")


async def to_route_request(request: generate_pb2.GenerateRequest, request_id: str, tokenizers: EngineTokenizers,
                           limits: Limits) -> router_pb2.RouteRequest:
    """Cheap checks first (no I/O), then the engine lookup, then tokenizing: a short prompt right here
    (tens of microseconds, less than the hand-off to a thread costs), a long one in a thread (a 1 MiB
    prompt takes a while and must not stall other calls)."""
    text_or_turns = check_input(request, limits)
    params = sampling_params_of(request.parameters, limits)
    engine = await tokenizers.get(request.model)
    token_ids = None
    if _chars(text_or_turns) <= INLINE_TOKENIZE_MAX_CHARS:
        token_ids = tokenize(engine, text_or_turns, wait=False)  # None while a long one holds the tokenizer
    if token_ids is None:
        token_ids = await asyncio.to_thread(tokenize, engine, text_or_turns)
    check_tokens(engine, "prompt" if isinstance(text_or_turns, str) else "messages", token_ids, params)
    # The parameters go on as the client sent them: the worker builds its SamplingParams from them.
    return router_pb2.RouteRequest(request_id=request_id, model=request.model, prompt_token_ids=token_ids,
                                   parameters=request.parameters, priority=request.priority)
