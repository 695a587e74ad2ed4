"""The worker's side of the Redis protocol: take entries from its model's requests stream, publish
events to the routers' results streams, acknowledge finished entries, keep running ones its own."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import redis.asyncio as aioredis
import structlog
from google.protobuf.message import DecodeError
from redis.exceptions import ResponseError

from inferline.v1 import router_pb2
from inferline.redis_protocol import (F_ENQUEUED_MS, F_ENTRY, F_EVENT, F_PAYLOAD, F_RID, F_ROUTER, F_SEQ,
                                   WORKERS_GROUP, cancel_key, ensure_group, queued_tokens_key,
                                   requests_stream, results_stream, text)

log = structlog.get_logger(__name__)

# Reset the idle time of the entries this consumer still owns; return the ids it no longer owns (taken
# over by another worker while this one was presumed dead). A bare `XCLAIM ... 0 JUSTID` would steal
# them back, and two workers would then run one request. Atomic, so no take-over slips in between.
TOUCH_OWN_ENTRIES = """
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""


@dataclass(frozen=True)
class QueueEntry:
    """One requests-stream entry: a request to run, and where its events go."""

    entry_id: str
    rid: str
    router: str
    enqueued_ms: float
    request: router_pb2.RouteRequest | None  # None: the payload is not a RouteRequest

    @classmethod
    def parse(cls, entry_id: bytes | str, fields: dict[bytes, bytes]) -> "QueueEntry":
        try:
            request: router_pb2.RouteRequest | None = router_pb2.RouteRequest.FromString(fields.get(F_PAYLOAD.encode(), b""))
        except DecodeError:
            request = None
        try:
            enqueued_ms = float(text(fields.get(F_ENQUEUED_MS.encode())))
        except ValueError:
            enqueued_ms = 0.0
        return cls(text(entry_id), text(fields.get(F_RID.encode())), text(fields.get(F_ROUTER.encode())),
                   enqueued_ms, request)

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids) if self.request is not None else 0


@dataclass(frozen=True)
class Publication:
    """An event to send to the entry's router; `final` also acknowledges (and deletes) the entry."""

    entry: QueueEntry
    event: router_pb2.RouteEvent
    final: bool


class RequestQueue:
    def __init__(self, client: aioredis.Redis, model: str, consumer: str, results_maxlen: int, results_ttl_s: int):
        self.client = client
        self.model = model
        self.consumer = consumer
        self.stream = requests_stream(model)
        self.results_maxlen = results_maxlen
        self.results_ttl_s = results_ttl_s
        self._touch = client.register_script(TOUCH_OWN_ENTRIES)

    async def ensure_group(self) -> None:
        await ensure_group(self.client, self.model)

    async def read_new(self, count: int, block_ms: int | None) -> list[QueueEntry]:
        """Up to `count` never-delivered entries, now owned by this consumer. They leave the queue, so
        their prompt tokens leave the model's queued-token budget."""
        try:
            response = await self.client.xreadgroup(WORKERS_GROUP, self.consumer, {self.stream: ">"}, count=count,
                                                    block=block_ms or None)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            # The stream was deleted under us (FLUSHDB, an operator): make it again and carry on.
            await self.ensure_group()
            return []
        entries = [QueueEntry.parse(eid, fields) for _stream, messages in response or []
                   for eid, fields in messages if fields]
        tokens = sum(e.prompt_tokens for e in entries)
        if tokens:
            await self.client.decrby(queued_tokens_key(self.model), tokens)
        return entries

    async def claim_dead(self, count: int, min_idle_ms: int) -> list[QueueEntry]:
        """Take over up to `count` entries nobody has re-claimed for `min_idle_ms` (their worker died).
        Their tokens already left the queued-token budget when first taken."""
        _next, messages, *_deleted = await self.client.xautoclaim(self.stream, WORKERS_GROUP, self.consumer,
                                                                  min_idle_ms, start_id="0-0", count=count)
        return [QueueEntry.parse(eid, fields) for eid, fields in messages if fields]

    async def cancelled(self, entries: Sequence[QueueEntry]) -> set[str]:
        """Entry ids among `entries` whose request the router cancelled (one MGET)."""
        if not entries:
            return set()
        values = await self.client.mget([cancel_key(e.rid) for e in entries])
        return {e.entry_id for e, value in zip(entries, values) if text(value) == e.entry_id}

    async def publish(self, publications: Iterable[Publication]) -> None:
        """Every event of a step in one round trip; a final event acknowledges its entry right after
        it (the order within a pipeline holds), and deletes it so the stream holds only live entries
        (the router counts queued = XLEN - pending)."""
        pipe = self.client.pipeline(transaction=False)
        routers: set[str] = set()
        for p in publications:
            pipe.xadd(results_stream(p.entry.router),
                      {F_RID: p.entry.rid, F_SEQ: p.event.seq, F_EVENT: p.event.SerializeToString(),
                       F_ENTRY: p.entry.entry_id},
                      maxlen=self.results_maxlen, approximate=True)
            routers.add(p.entry.router)
            if p.final:
                pipe.xack(self.stream, WORKERS_GROUP, p.entry.entry_id)
                pipe.xdel(self.stream, p.entry.entry_id)
        if not routers:
            return
        for router in routers:  # a dead router's stream goes away on its own
            pipe.expire(results_stream(router), self.results_ttl_s)
        await pipe.execute()

    async def touch(self, entry_ids: Sequence[str]) -> list[str]:
        """Reset the idle time of our running entries; returns those another worker has taken over."""
        if not entry_ids:
            return []
        lost = await self._touch(keys=[self.stream], args=[WORKERS_GROUP, self.consumer, *entry_ids])
        return [text(x) for x in lost]

    async def release(self, entry_ids: Sequence[str], idle_ms: int) -> None:
        """Hand entries back unfinished (drain timeout): mark them idle for `idle_ms`, so the next
        XAUTOCLAIM of a live worker takes them at once instead of a heartbeat expiry later."""
        if entry_ids:
            await self.client.xclaim(self.stream, WORKERS_GROUP, self.consumer, 0, list(entry_ids),
                                     idle=idle_ms, justid=True)


    async def forget_consumer(self) -> None:
        """Leave the consumer group (after a clean drain: nothing is pending under this name, and
        deleting a consumer would drop its pending entries)."""
        pending = await self.client.xpending_range(self.stream, WORKERS_GROUP, "-", "+", 1, consumername=self.consumer)
        if not pending:
            await self.client.xgroup_delconsumer(self.stream, WORKERS_GROUP, self.consumer)
