"""The engine: add requests, call step() until done. One step reads in a few lines:
schedule -> run the model -> sample -> postprocess (append tokens, detokenize, finish)."""
from __future__ import annotations

import gc
import random
import uuid
from dataclasses import dataclass
from typing import Sequence as Seq

import structlog
import torch

from engine.block_manager import BlockManager, blocks_for
from engine.config import DTYPES, EngineConfig
from engine.detokenizer import IncrementalDetokenizer, StopStringMatcher
from engine.errors import InvalidParameterError
from engine.kv_cache import allocate_kv_cache, kv_cache_dtype, num_blocks_for_budget
from engine.layers.attention import ATTENTION_BACKENDS, resolve_backend
from engine.layers.attention.kv_quant import KV_FP8
from engine.loader import open_checkpoint
from engine.model_runner import ModelRunner, load_model
from engine.models.llama import Attention
from engine.outputs import CompletionOutput, EngineStats, RequestOutput, TokenLogprob, Usage
from engine.sampler import SampledTokens, Sampler, SamplingRow
from engine.sampling_params import SamplingParams, needs_token_history
from engine.scheduler import ScheduledSequence, Scheduler
from engine.sequence import PENDING, Sequence, SequenceStatus
from engine.tokenizer import load_tokenizer

log = structlog.get_logger(__name__)


@dataclass
class _Request:
    seq: Sequence
    generator: torch.Generator
    detokenizer: IncrementalDetokenizer | None
    stop_matcher: StopStringMatcher


@dataclass
class _Launched:
    """A step whose sampled tokens may still be on the device."""

    requests: list[_Request]  # the sequences that sample, in sampled-row order
    output_index: list[int]  # where each one's token goes in its output_token_ids
    sampled: SampledTokens
    # Whether the next step may be launched before these tokens reach the host: not when a sampler
    # needs a sequence's token history on the host (penalties).
    next_can_start: bool


class Engine:
    def __init__(self, config: EngineConfig):
        self.config = config
        ckpt = open_checkpoint(config.model)
        self.model_config = cfg = ckpt.config
        self.tokenizer = load_tokenizer(ckpt)
        self.device = torch.device(config.device)
        self.dtype = DTYPES[config.dtype or self._default_dtype(cfg.torch_dtype)]
        self.kv_cache_dtype = kv_cache_dtype(config.kv_cache_dtype, self.dtype)
        self.max_seq_len = self._resolve_max_seq_len()
        backend = resolve_backend(config.attention_backend, self.device)
        model = load_model(ckpt, self.dtype, self.device, self.max_seq_len, backend)
        self.runner = ModelRunner(model, config.block_size, self.device)
        # CUDA graphs and the profiling forward need attention whose launches never depend on the data.
        graph_safe = self.device.type == "cuda" and ATTENTION_BACKENDS[backend].supports_cuda_graphs
        step_tokens = min(config.max_num_tokens, config.max_batch_size * self.max_seq_len)
        activation_bytes = (self.runner.profile_activation_bytes(step_tokens, config.max_batch_size,
                                                                 self.kv_cache_dtype) if graph_safe else 0)
        num_blocks = config.num_kv_blocks or num_blocks_for_budget(
            cfg, config.block_size, self.kv_cache_dtype, self.device, config.kv_cache_free_mem_fraction,
            max_useful_blocks=config.max_batch_size * blocks_for(self.max_seq_len, config.block_size),
            reserved_bytes=activation_bytes)
        self.runner.attach_kv_caches(allocate_kv_cache(cfg, num_blocks, config.block_size, self.kv_cache_dtype,
                                                       self.device))
        if self.kv_cache_dtype == KV_FP8:
            self._log_kv_scales(model)
        if graph_safe and config.cuda_graphs:
            self.runner.capture_graphs(config.max_batch_size, config.max_num_tokens, self.max_seq_len)
        self.block_manager = BlockManager(num_blocks, config.block_size)
        self.scheduler = Scheduler(config.scheduler_config, self.block_manager)
        self.eos_token_ids = self._eos_token_ids()
        self.sampler = Sampler(self.eos_token_ids)
        self._requests: dict[str, _Request] = {}
        self._aborted: list[RequestOutput] = []
        # Async scheduling (vLLM's name; SGLang's overlap scheduler): step N+1 is scheduled and launched
        # while step N still runs on the GPU, its input tokens read on the device, and only then are step
        # N's tokens read back and processed, so the host's per-step work hides behind the GPU's.
        self.async_scheduling = (config.async_scheduling if config.async_scheduling is not None
                                 else self.device.type == "cuda")
        self._in_flight: _Launched | None = None
        # Everything allocated so far (modules, tokenizer, transformers' tables) lives as long as the
        # engine: frozen out of the collector, whose full passes over it cost ~7 ms per 256-sequence
        # step otherwise (measured on the CI machine), as vLLM does after start-up.
        gc.freeze()
        log.info("engine_ready", model=config.model, architecture=cfg.architecture, device=str(self.device),
                 dtype=str(self.dtype), kv_cache_dtype=str(self.kv_cache_dtype), attention=backend,
                 cuda_graphs=self.runner.graphs is not None,
                 activation_reserve_gib=round(activation_bytes / 2**30, 3), kv_blocks=num_blocks,
                 block_size=config.block_size, max_seq_len=self.max_seq_len)

    # -- public API ------------------------------------------------------------------------------

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None) -> None:
        params = params or SamplingParams()
        if request_id in self._requests:
            raise InvalidParameterError("request_id", f"{request_id!r} is already running")
        token_ids = self._tokenize(prompt)
        self._check_fits(token_ids, params)
        seq = Sequence(request_id, token_ids, params, max_total_tokens=self.max_seq_len)
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        detok = (IncrementalDetokenizer(self.tokenizer, token_ids, params.skip_special_tokens)
                 if self.tokenizer and params.detokenize else None)
        self._requests[request_id] = _Request(seq, torch.Generator(self.device).manual_seed(seed), detok,
                                              StopStringMatcher(params.stop))
        self.scheduler.add(seq)

    def step(self) -> list[RequestOutput]:
        """Schedule and launch the next step, then return what the previous launch produced (with
        async scheduling; without it, both are the same step)."""
        outputs, self._aborted = self._aborted, []
        previous, self._in_flight = self._in_flight, None
        if previous is not None and not previous.next_can_start:
            outputs += self._finish(previous)
            previous = None
        batch = self.scheduler.schedule().scheduled
        launched = self._launch(batch, previous) if batch else None
        if previous is not None:
            outputs += self._finish(previous)
        if launched is not None and self.async_scheduling:
            self._in_flight = launched
        elif launched is not None:
            outputs += self._finish(launched)
        return outputs

    def abort(self, request_id: str) -> bool:
        """Stop a request now and free its KV blocks; the next step() reports it with finish_reason 'abort'."""
        req = self._requests.pop(request_id, None)
        if req is None:
            return False
        self.scheduler.abort(request_id)
        self._aborted.append(RequestOutput(request_id, [], "", None, True, "abort", self._usage(req.seq)))
        return True

    def has_unfinished(self) -> bool:
        return bool(self._requests) or bool(self._aborted) or self._in_flight is not None

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(running=len(self.scheduler.running), waiting=len(self.scheduler.waiting),
                           preempted=self.scheduler.num_preemptions, kv_blocks_used=bm.num_used_blocks,
                           kv_blocks_free=bm.num_free_blocks, kv_blocks_total=bm.num_blocks)

    def generate(self, prompts: Seq[str | list[int]],
                 params: SamplingParams | Seq[SamplingParams] | None = None) -> list[CompletionOutput]:
        """Offline batch generation: run every prompt to completion, results in prompt order."""
        per_prompt = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(per_prompt) != len(prompts):
            raise InvalidParameterError("params", f"got {len(per_prompt)} for {len(prompts)} prompts")
        results = {}
        for prompt, p in zip(prompts, per_prompt):
            rid = f"generate-{uuid.uuid4().hex}"
            self.add_request(rid, prompt, p)
            results[rid] = CompletionOutput(rid)
        pending = set(results)
        while pending:
            for out in self.step():
                if out.request_id in results:
                    results[out.request_id].extend(out)
                    if out.finished:
                        pending.discard(out.request_id)
        return list(results.values())

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise InvalidParameterError("messages", "this model has no chat template")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer.encode(text, add_special_tokens=False)

    # -- internals ---------------------------------------------------------------------------------

    def _launch(self, batch: list[ScheduledSequence], previous: _Launched | None) -> _Launched:
        """Run the model and the sampler for `batch` without waiting for the results; each sampling
        sequence gets a PENDING output token, read from the device by the next step if need be."""
        logits = self.runner.execute(batch, previous.sampled.token_ids if previous is not None else None)
        requests = [self._requests[item.seq.request_id] for item in batch if item.samples]
        sampled = self.sampler.sample(logits, [SamplingRow(r.seq, r.generator) for r in requests])
        for item in batch:
            item.seq.num_computed_tokens += item.num_tokens
        output_index = []
        for row, req in enumerate(requests):
            output_index.append(len(req.seq.output_token_ids))
            req.seq.output_token_ids.append(PENDING)
            req.seq.pending_row = row
        next_can_start = not any(needs_token_history(r.seq.params) for r in requests)
        return _Launched(requests, output_index, sampled, next_can_start)

    def _finish(self, launched: _Launched) -> list[RequestOutput]:
        """Wait for a launched step's tokens and process them (stops, detokenizing, finishing)."""
        tokens = launched.sampled.tokens()
        outputs = []
        for req, index, tok in zip(launched.requests, launched.output_index, tokens):
            if req.seq.status is SequenceStatus.FINISHED:  # aborted, or ended by the token before this one
                continue
            req.seq.output_token_ids[index] = tok.token_id
            if req.seq.pending_row is not None and index == len(req.seq.output_token_ids) - 1:
                req.seq.pending_row = None  # no later step carries it
            outputs.append(self._append_token(req, tok, index))
        return outputs

    def _append_token(self, req: _Request, tok: TokenLogprob, index: int) -> RequestOutput:
        """Process output token number `index` (later ones may be in flight)."""
        seq, p = req.seq, req.seq.params
        generated = index + 1
        delta, reason = "", None
        if tok.token_id in self.eos_token_ids and not p.ignore_eos:
            reason = "eos"
        elif tok.token_id in p.stop_token_ids:
            reason = "stop"
        elif req.detokenizer is not None:
            delta = req.stop_matcher.add(req.detokenizer.add(tok.token_id))
            reason = "stop" if req.stop_matcher.stopped else None
        if reason is None and (generated >= p.max_tokens
                               or len(seq.prompt_token_ids) + generated >= seq.max_total_tokens):
            reason = "length"
        if reason is not None:
            delta += req.stop_matcher.flush()
            del seq.output_token_ids[generated:]  # a token computed past the end (async scheduling)
            seq.pending_row = None
            self.scheduler.finish(seq, reason)
            del self._requests[seq.request_id]
        return RequestOutput(seq.request_id, [tok.token_id], delta, [tok] if p.logprobs else None,
                             reason is not None, reason,
                             Usage(prompt_tokens=len(seq.prompt_token_ids), completion_tokens=generated))

    @staticmethod
    def _usage(seq: Sequence) -> Usage:
        """Tokens reported so far (those still in flight never will be)."""
        outputs = seq.output_token_ids
        return Usage(prompt_tokens=len(seq.prompt_token_ids), completion_tokens=len(outputs) - outputs.count(PENDING))

    def _tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidParameterError("prompt", "this model has no tokenizer; pass token ids")
            token_ids = self.tokenizer.encode(prompt) if prompt else []
        else:
            token_ids = list(prompt)
            vocab = self.model_config.vocab_size
            bad = [t for t in token_ids if not isinstance(t, int) or not 0 <= t < vocab]
            if bad:
                raise InvalidParameterError("prompt", f"token ids must be integers in [0, {vocab}), got {bad[:5]}")
        if not token_ids:
            raise InvalidParameterError("prompt", "is empty")
        return token_ids

    def _check_fits(self, token_ids: list[int], params: SamplingParams) -> None:
        n = len(token_ids)
        if n >= self.max_seq_len:
            raise InvalidParameterError("prompt", f"{n} tokens leave no room to generate within "
                                                  f"max_seq_len={self.max_seq_len}")
        bad = [t for t in params.stop_token_ids if t >= self.model_config.vocab_size]
        if bad:
            raise InvalidParameterError("stop_token_ids",
                                        f"must be < vocab size {self.model_config.vocab_size}, got {bad}")
        bm = self.block_manager
        need = blocks_for(min(n + params.max_tokens, self.max_seq_len), bm.block_size)
        if need > bm.num_blocks:
            field = "prompt" if blocks_for(n + 1, bm.block_size) > bm.num_blocks else "max_tokens"
            raise InvalidParameterError(field, f"prompt ({n} tokens) + max_tokens ({params.max_tokens}) need {need} KV "
                                               f"blocks but the pool has {bm.num_blocks}")

    @staticmethod
    def _log_kv_scales(model: torch.nn.Module) -> None:
        # Without a checkpoint's scales K and V are stored as they are: anything past +-448 saturates.
        layers = [m for m in model.modules() if isinstance(m, Attention)]
        defaults = sum(not m.kv_scales_loaded for m in layers)
        if defaults:
            log.warning("fp8_kv_cache_default_scales", layers=defaults, of_layers=len(layers), k_scale=1.0,
                        v_scale=1.0, message="the checkpoint has no self_attn.k_scale/v_scale for these layers: "
                                             "K and V are stored unscaled in e4m3 (saturating at +-448), as vLLM "
                                             "does without calibration")

    def _default_dtype(self, checkpoint_dtype: str | None) -> str:
        if self.device.type == "cpu":
            return "float32"
        return checkpoint_dtype if checkpoint_dtype in DTYPES else "bfloat16"

    def _resolve_max_seq_len(self) -> int:
        cfg, asked = self.model_config, self.config.max_seq_len
        limit = cfg.max_position_embeddings
        # Sliding-window attention is not implemented; within the window it equals full attention.
        if cfg.sliding_window:
            limit = min(limit, cfg.sliding_window)
        if asked is not None and asked > limit:
            raise InvalidParameterError("max_seq_len", f"{asked} exceeds the model's context length {limit}")
        return asked or limit

    def _eos_token_ids(self) -> tuple[int, ...]:
        ids = set(self.model_config.eos_token_ids)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return tuple(sorted(ids))
