"""Idempotency keys: a client's request_id names one generation, across retries and routers.

The first Route with an idempotent id claims it (idem:{rid}: fingerprint, owner, state) and runs the
request; as it receives the events, the owner appends them to idem-events:{rid}. Any other Route with
that id and the same request, on this router or another, follows that stream instead of generating
again: it joins a running generation, or replays a finished one.
- While running, the claim is a lease the owner's router renews (keep_leases). A router that dies lets
  it lapse; a follower then claims the id and runs the request itself.
- An owner that ends without a result (its caller cancelled or went away) appends `end` and deletes
  the claim: a follower claims the id and runs the request again, dropping the events its caller
  already has (EventOrder), so its stream stays one (identical for greedy or seeded sampling).
- An error event is recorded (followers get the same status) and the claim deleted: a later retry
  runs again, since errors such as INTERNAL may not recur.
- A finished generation is replayed for result_ttl_s.
"""
from __future__ import annotations

import asyncio
import enum
import hashlib
from typing import AsyncIterator

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from inferline.redis_protocol import idempotency_events, idempotency_key, text
from inferline.v1 import router_pb2
from router.sequencing import EventOrder

log = structlog.get_logger(__name__)

F_EVENT, F_END = "event", "end"  # fields of an idem-events entry

# KEYS: idem hash, events stream. ARGV: fingerprint, owner (router id), lease ms.
CLAIM = """
local fp = redis.call('HGET', KEYS[1], 'fp')
if not fp then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'owner', ARGV[2], 'state', 'running')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 'claimed'
end
if fp ~= ARGV[1] then return 'mismatch' end
return 'follow'
"""

# Only while still the owner: after a lapsed lease another router may own the id now.
# KEYS: idem hash, events stream. ARGV: owner, ttl ms.
COMPLETE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: idem hash, events stream. ARGV: owner, reason, ttl ms of the events stream (for followers).
RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('XADD', KEYS[2], '*', 'end', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

FOLLOWER_GRACE_MS = 60_000  # how long a given-up run's events stay readable for its followers


class Claim(enum.Enum):
    CLAIMED = "claimed"  # this call runs the request
    FOLLOW = "follow"  # another call runs (or ran) it: follow its events
    MISMATCH = "mismatch"  # the id was used for a different request


def fingerprint(request: router_pb2.RouteRequest) -> str:
    """What makes two requests the same: model, prompt and parameters (not the id, not the priority,
    which changes when the request runs, not what it generates)."""
    same = router_pb2.RouteRequest(model=request.model, prompt_token_ids=request.prompt_token_ids,
                                   parameters=request.parameters)
    return hashlib.sha256(same.SerializeToString(deterministic=True)).hexdigest()


class IdempotencyStore:
    def __init__(self, client: aioredis.Redis, router_id: str, lease_s: float, result_ttl_s: float,
                 follow_block_ms: int = 1000):
        self.client = client
        self.router_id = router_id
        self.lease_ms = int(lease_s * 1000)
        self.result_ttl_ms = int(result_ttl_s * 1000)
        self.follow_block_ms = follow_block_ms
        self._claim = client.register_script(CLAIM)
        self._complete = client.register_script(COMPLETE)
        self._release = client.register_script(RELEASE)
        self._owned: set[str] = set()

    async def claim(self, rid: str, request_fingerprint: str) -> Claim:
        outcome = text(await self._claim(keys=self._keys(rid), args=[request_fingerprint, self.router_id,
                                                                     self.lease_ms]))
        if outcome == Claim.CLAIMED.value:
            self._owned.add(rid)
        return Claim(outcome)

    async def record(self, rid: str, event: router_pb2.RouteEvent) -> None:
        """Append an event the owner's caller is about to receive; a final one completes the claim
        (replayable for result_ttl_s) unless it is an error, which releases it."""
        await self.client.xadd(idempotency_events(rid), {F_EVENT: event.SerializeToString()})
        if event.error_code:
            await self.release(rid, "error")
        elif event.finish_reason:
            self._owned.discard(rid)
            await self._complete(keys=self._keys(rid), args=[self.router_id, self.result_ttl_ms])

    async def release(self, rid: str, reason: str) -> None:
        """Give the id up unfinished: followers (if any) take it over, a later retry runs anew."""
        self._owned.discard(rid)
        await self._release(keys=self._keys(rid), args=[self.router_id, reason, FOLLOWER_GRACE_MS])

    async def follow(self, rid: str, order: EventOrder) -> AsyncIterator[router_pb2.RouteEvent]:
        """The owner's events that `order` lets through, up to the final one. Returns early, with
        `order` unfinished, when the owner gave up or its lease lapsed: the caller claims the id then."""
        cursor = "0-0"
        while True:
            response = await self.client.xread({idempotency_events(rid): cursor}, count=256,
                                               block=self.follow_block_ms)
            if not response:
                if not await self.client.exists(idempotency_key(rid)):
                    return
                continue
            for _stream, messages in response:
                for message_id, fields in messages:
                    cursor = text(message_id)
                    if F_END.encode() in fields:
                        return
                    event = router_pb2.RouteEvent.FromString(fields.get(F_EVENT.encode(), b""))
                    for ready in order.accept(event):
                        yield ready
                    if order.finished:
                        return

    async def keep_leases(self) -> None:
        """Renew the claims of the requests this router runs; forever (cancel to stop)."""
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            if not self._owned:
                continue
            pipe = self.client.pipeline(transaction=False)
            for rid in self._owned:
                for key in self._keys(rid):
                    pipe.pexpire(key, self.lease_ms)
            try:
                await pipe.execute()
            except RedisError as e:  # the leases may lapse; followers then run the requests themselves
                log.warning("idempotency_lease_renewal_failed", error=str(e), requests=len(self._owned))

    @staticmethod
    def _keys(rid: str) -> list[str]:
        return [idempotency_key(rid), idempotency_events(rid)]
