"""Admission and queueing: is anyone serving the model, is its queue within its limits, then XADD to
the request's priority band (docs/serving.md, "Priority bands").

A model no live worker serves is NOT_FOUND, unless the operator listed it in scale_from_zero_models:
its requests are queued all the same, for a worker an autoscaler starts on the queue's backlog
(docs/deploy.md, "Autoscaling workers with KEDA").

The limit checks and the XADD run in one Lua script: concurrent calls (of this router or others)
cannot all pass the check and overshoot the limit together.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import redis.asyncio as aioredis
import structlog
from grpc_interceptor.exceptions import NotFound, ResourceExhausted
from redis.exceptions import ResponseError

from inferline.v1 import router_pb2
from inferline.redis_protocol import (F_ENQUEUED_MS, F_PAYLOAD, F_RID, F_ROUTER, WORKERS_GROUP, band_of,
                                      ensure_group, queued_tokens_key, requests_stream, requests_streams, run_id,
                                      text, worker_key, workers_set)

log = structlog.get_logger(__name__)

# How long a count of live workers (> 0) is reused before Redis is asked again. Well under the
# workers' heartbeat TTL (5 s), which already delays noticing a dead worker by that much.
LIVE_WORKERS_CACHE_S = 1.0

# KEYS: the request's band stream, queued-tokens counter, then every band stream of the model (the
# limits are per model, across bands). ARGV: group, max depth, max tokens, prompt tokens, then the
# entry's field/value pairs. Queued = entries not yet taken = sum over bands of XLEN - pending, since
# workers delete the entries they acknowledge.
ADMIT_AND_ENQUEUE = """
local queued = 0
for i = 3, #KEYS do
  queued = queued + redis.call('XLEN', KEYS[i]) - redis.call('XPENDING', KEYS[i], ARGV[1])[1]
end
if queued >= tonumber(ARGV[2]) then return {'depth', queued} end
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
if tokens + tonumber(ARGV[4]) > tonumber(ARGV[3]) then return {'tokens', tokens} end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 5))
redis.call('INCRBY', KEYS[2], ARGV[4])
return {'ok', id}
"""


@dataclass(frozen=True)
class ModelQueueState:
    model: str
    queued: int
    queued_tokens: int
    workers: int


class Admission:
    def __init__(self, client: aioredis.Redis, router_id: str, max_queue_depth: int, max_queued_tokens: int,
                 scale_from_zero_models: Iterable[str] = (), workers_cache_s: float = LIVE_WORKERS_CACHE_S,
                 clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.router_id = router_id
        self.max_queue_depth = max_queue_depth
        self.max_queued_tokens = max_queued_tokens
        self.scale_from_zero_models = frozenset(scale_from_zero_models)
        self.workers_cache_s = workers_cache_s
        self._clock = clock
        self._admit_and_enqueue = client.register_script(ADMIT_AND_ENQUEUE)
        self._groups_made: set[str] = set()
        self._workers_seen: dict[str, tuple[float, int]] = {}  # model -> (when counted, live workers > 0)
        self._without_workers: set[str] = set()  # scale-from-zero models last found with no live worker

    async def live_workers(self, model: str) -> int:
        """Workers whose heartbeat hash has not expired; ids of expired ones leave the set."""
        ids = [text(i) for i in await self.client.smembers(workers_set(model))]
        if not ids:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for worker_id in ids:
            pipe.exists(worker_key(worker_id))
        alive = await pipe.execute()
        stale = [w for w, ok in zip(ids, alive) if not ok]
        if stale:  # a worker that comes back re-adds itself with its next heartbeat
            await self.client.srem(workers_set(model), *stale)
        return len(ids) - len(stale)

    async def require_workers(self, model: str) -> int:
        """The model's live workers; NOT_FOUND when there are none, unless the model may scale from
        zero (then 0: its request is queued for a worker yet to start).

        A count > 0 is reused for workers_cache_s (no Redis round trip per request); a 0 is never
        reused, so a worker that has just started is seen by the next request."""
        now = self._clock()
        seen = self._workers_seen.get(model)
        if seen is not None and now - seen[0] < self.workers_cache_s:
            return seen[1]
        workers = await self.live_workers(model)
        if workers:
            self._workers_seen[model] = (now, workers)
            if model in self._without_workers:
                self._without_workers.discard(model)
                log.info("model_workers_live", model=model, workers=workers)
            return workers
        self._workers_seen.pop(model, None)
        if model not in self.scale_from_zero_models:
            # NOT_FOUND, not queueing: a model no worker serves is most likely a wrong name, and a
            # request queued for it would only wait out its deadline.
            raise NotFound(f"model {model!r} is not served: no live worker has it loaded")
        if model not in self._without_workers:  # once per transition, not per request
            self._without_workers.add(model)
            log.info("model_without_workers_queueing", model=model,
                     message="no live worker: requests are queued until one starts (scale_from_zero_models)")
        return 0

    async def enqueue(self, request: router_pb2.RouteRequest) -> str:
        """Queue the request in its priority band if the model's queue has room; returns the run id
        (the stream entry id, prefixed with the band unless NORMAL)."""
        model, band = request.model, band_of(request.priority)
        if model not in self._groups_made:
            await ensure_group(self.client, model)  # XPENDING in the script needs the group
            self._groups_made.add(model)
        prompt_tokens = len(request.prompt_token_ids)
        fields = [F_RID, request.request_id, F_ROUTER, self.router_id, F_PAYLOAD, request.SerializeToString(),
                  F_ENQUEUED_MS, int(time.time() * 1000)]
        args = [WORKERS_GROUP, self.max_queue_depth, self.max_queued_tokens, prompt_tokens, *fields]
        keys = [requests_stream(model, band), queued_tokens_key(model), *requests_streams(model)]
        try:
            outcome, value = await self._admit_and_enqueue(keys=keys, args=args)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            # A stream was deleted under us (FLUSHDB, an operator): make them again, once.
            await ensure_group(self.client, model)
            outcome, value = await self._admit_and_enqueue(keys=keys, args=args)
        outcome = text(outcome)
        if outcome == "depth":
            raise ResourceExhausted(f"model {model!r} queue is full: {value} requests queued "
                                    f"(max_queue_depth={self.max_queue_depth})")
        if outcome == "tokens":
            raise ResourceExhausted(f"model {model!r} queue is full: {value} prompt tokens queued, "
                                    f"{prompt_tokens} more would exceed max_queued_tokens={self.max_queued_tokens}")
        return run_id(band, text(value))

    async def queue_state(self, model: str) -> ModelQueueState:
        streams = requests_streams(model)
        pipe = self.client.pipeline(transaction=False)
        for stream in streams:
            pipe.xlen(stream)
            pipe.xpending(stream, WORKERS_GROUP)
        pipe.get(queued_tokens_key(model))
        *per_stream, tokens = await pipe.execute(raise_on_error=False)
        queued = 0
        for length, pending in zip(per_stream[::2], per_stream[1::2]):
            pending_count = 0 if isinstance(pending, Exception) else int(pending["pending"])  # no group yet
            queued += max(0, int(length) - pending_count)
        return ModelQueueState(model=model, queued=queued, queued_tokens=max(0, int(tokens or 0)),
                               workers=await self.live_workers(model))
