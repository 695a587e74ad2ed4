"""Admission and queueing: is anyone serving the model, is its queue within its limits, then XADD to
the request's priority band (docs/serving.md, "Priority bands").

A model no live worker serves is NOT_FOUND, unless the operator listed it in scale_from_zero_models:
its requests are queued all the same, for a worker an autoscaler starts on the queue's backlog
(docs/deploy.md, "Autoscaling workers with KEDA").

The limit checks and the XADD run in one Lua script: concurrent calls (of this router or others)
cannot all pass the check and overshoot the limit together. The requests that arrive together (the
starts of one RouteMany message, or any that come while a round trip is out) share one script call
per model, admitted in arrival order, each against the queue as the ones before it left it: one
command to pack, send and parse instead of one per request, which was the router's largest cost.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import redis.asyncio as aioredis
import structlog
from grpc_interceptor.exceptions import NotFound, ResourceExhausted
from redis.exceptions import ResponseError

from inferline.v1 import router_pb2
from inferline.redis_protocol import (BANDS, F_ENQUEUED_MS, F_PAYLOAD, F_RID, F_ROUTER, WORKERS_GROUP, band_of,
                                      ensure_group, queued_tokens_key, requests_streams, run_id, text, worker_key,
                                      workers_set)

log = structlog.get_logger(__name__)

# How long a count of live workers (> 0) is reused before Redis is asked again. Well under the
# workers' heartbeat TTL (5 s), which already delays noticing a dead worker by that much.
LIVE_WORKERS_CACHE_S = 1.0

# KEYS: the model's band streams (BANDS order), then its queued-tokens counter. ARGV: group, max depth,
# max tokens, the entry's 4 field names (F_RID, F_ROUTER, F_PAYLOAD, F_ENQUEUED_MS), the router id, then
# per request 5 values: band (index into KEYS), prompt tokens, request id, payload, enqueued ms.
# Queued = entries not yet taken = sum over bands of XLEN - pending (workers delete the entries they
# acknowledge), read before any write: a missing stream (NOGROUP) fails the call having changed nothing.
# Returns per request {'ok', entry id}, {'depth', queued} or {'tokens', queued tokens}.
ADMIT_AND_ENQUEUE = """
local bands = #KEYS - 1
local queued = 0
for i = 1, bands do
  queued = queued + redis.call('XLEN', KEYS[i]) - redis.call('XPENDING', KEYS[i], ARGV[1])[1]
end
local max_depth, max_tokens = tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = tonumber(redis.call('GET', KEYS[#KEYS]) or '0')
local added, out = 0, {}
for i = 9, #ARGV, 5 do
  local n = tonumber(ARGV[i + 1])
  if queued >= max_depth then
    out[#out + 1] = {'depth', queued}
  elseif tokens + n > max_tokens then
    out[#out + 1] = {'tokens', tokens}
  else
    out[#out + 1] = {'ok', redis.call('XADD', KEYS[tonumber(ARGV[i])], '*', ARGV[4], ARGV[i + 2], ARGV[5], ARGV[8],
                                      ARGV[6], ARGV[i + 3], ARGV[7], ARGV[i + 4])}
    queued, tokens, added = queued + 1, tokens + n, added + n
  end
end
if added > 0 then redis.call('INCRBY', KEYS[#KEYS], added) end
return out
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
        self._waiting: dict[str, list[tuple[router_pb2.RouteRequest, asyncio.Future[str]]]] = {}  # by model
        self._sender: asyncio.Task[None] | None = None  # sends what waits, one round trip per model at a time

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

    def enqueue(self, request: router_pb2.RouteRequest) -> asyncio.Future[str]:
        """Queue the request in its priority band if the model's queue has room. The future's result is
        the run id (the stream entry id, prefixed with the band unless NORMAL); its exception
        RESOURCE_EXHAUSTED when the queue is full, or the Redis error. Requests enqueued while a round
        trip is out wait for it and go together in the next."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(request.model, []).append((request, future))
        if self._sender is None:
            # A task, not a call now: the other starts of the same message get into this batch first.
            self._sender = asyncio.create_task(self._send_waiting(), name="admission-sender")
        return future

    async def _send_waiting(self) -> None:
        batch: list[tuple[router_pb2.RouteRequest, asyncio.Future[str]]] = []
        try:
            while self._waiting:
                model, batch = next(iter(self._waiting.items()))
                del self._waiting[model]
                try:
                    outcomes = await self._admit(model, [request for request, _ in batch])
                except Exception as e:  # Redis down, a bug: every request of the batch gets the error
                    outcomes = [e] * len(batch)
                for (_, future), outcome in zip(batch, outcomes):
                    if future.done():
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        except asyncio.CancelledError:  # the loop is ending: no caller may wait on a future nobody resolves
            for _, future in batch + [item for waiting in self._waiting.values() for item in waiting]:
                future.cancel()
            self._waiting.clear()
            raise
        finally:
            self._sender = None

    async def _admit(self, model: str, requests: list[router_pb2.RouteRequest]) -> list[str | Exception]:
        """One script call for the model's requests: per request its run id, or RESOURCE_EXHAUSTED."""
        if model not in self._groups_made:
            await ensure_group(self.client, model)  # XPENDING in the script needs the group
            self._groups_made.add(model)
        band_index = {band: i for i, band in enumerate(BANDS, start=1)}
        now_ms = int(time.time() * 1000)
        args: list[str | int | bytes] = [WORKERS_GROUP, self.max_queue_depth, self.max_queued_tokens,
                                         F_RID, F_ROUTER, F_PAYLOAD, F_ENQUEUED_MS, self.router_id]
        for request in requests:
            args += [band_index[band_of(request.priority)], len(request.prompt_token_ids), request.request_id,
                     request.SerializeToString(), now_ms]
        keys = [*requests_streams(model), queued_tokens_key(model)]
        try:
            replies = await self._admit_and_enqueue(keys=keys, args=args)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            # A stream was deleted under us (FLUSHDB, an operator): make them again, once.
            await ensure_group(self.client, model)
            replies = await self._admit_and_enqueue(keys=keys, args=args)
        return [self._outcome(request, text(outcome), value) for request, (outcome, value) in zip(requests, replies)]

    def _outcome(self, request: router_pb2.RouteRequest, outcome: str, value: bytes | int) -> str | Exception:
        model = request.model
        if outcome == "depth":
            return ResourceExhausted(f"model {model!r} queue is full: {value} requests queued "
                                     f"(max_queue_depth={self.max_queue_depth})")
        if outcome == "tokens":
            return ResourceExhausted(f"model {model!r} queue is full: {value} prompt tokens queued, "
                                     f"{len(request.prompt_token_ids)} more would exceed "
                                     f"max_queued_tokens={self.max_queued_tokens}")
        return run_id(band_of(request.priority), text(value))

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
