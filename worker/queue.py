"""The worker's side of the Redis protocol: take entries from its model's request streams (one per
priority band, highest first), publish events to the routers' results streams, acknowledge finished
entries, keep running ones its own. Entries are known by run id (band + stream entry id): an entry
id alone is unique only within its band's stream."""
from __future__ import annotations

from dataclasses import dataclass, replace
from collections import defaultdict
from typing import Iterable, Sequence

import redis.asyncio as aioredis
import structlog
from google.protobuf.message import DecodeError
from redis.exceptions import ResponseError

from inferline.v1 import router_pb2
from inferline.redis_protocol import (BANDS, F_ENQUEUED_MS, F_ENTRY, F_EVENT, F_PAYLOAD, F_RID, F_ROUTER, F_SEQ,
                                      WORKERS_GROUP, cancel_key, ensure_group, queued_tokens_key, requests_stream,
                                      results_stream, run_id, split_run_id, text)

log = structlog.get_logger(__name__)

# Reset the idle time of the entries this consumer still owns; return the run ids it no longer owns
# (taken over by another worker while this one was presumed dead). A bare `XCLAIM ... 0 JUSTID` would
# steal them back, and two workers would then run one request. Atomic, so no take-over slips in
# between. KEYS: the band streams. ARGV: group, consumer, then per entry: index into KEYS, stream
# entry id, run id (an entry id is unique only within its stream).
TOUCH_OWN_ENTRIES = """
local lost = {}
for i = 3, #ARGV, 3 do
  local key, id = KEYS[tonumber(ARGV[i])], ARGV[i + 1]
  local p = redis.call('XPENDING', key, ARGV[1], id, id, 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', key, ARGV[1], ARGV[2], 0, id, 'JUSTID')
  else
    table.insert(lost, ARGV[i + 2])
  end
end
return lost
"""


# Take up to ARGV[3] never-delivered entries from the band streams (KEYS, highest band first), FIFO
# within a band, in one round trip: a busy worker runs this every step. ARGV: group, consumer, count,
# max wait ms (0: strict bands). With a max wait, entries enqueued longer ago than that (by the time in
# their auto id, the router's XADD) are taken first, oldest first across bands (ties: the higher band),
# so a steady stream of HIGH requests cannot starve the lower bands; then the bands in order. Returns
# {band index (1-based), entries, 1 if taken for their age else 0} triples; XREADGROUP in a script never
# blocks.
READ_BANDS = """
local group, consumer, left, max_wait = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
local function take(i, count, aged)
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', KEYS[i], '>')
  if r and r[1] and #r[1][2] > 0 then
    table.insert(out, {i, r[1][2], aged})
    left = left - #r[1][2]
  end
end
local function split_id(id)
  local dash = string.find(id, '-', 1, true)
  return {tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))}
end
if max_wait > 0 and left > 0 then
  local now = redis.call('TIME')
  local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - max_wait
  local aged = {}  -- per band: the ids of its next undelivered entries older than the cutoff, oldest first
  for i = 1, #KEYS do
    aged[i] = {}
    local last = nil
    if redis.call('EXISTS', KEYS[i]) == 1 then
      for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[i])) do
        local name, delivered = nil, nil
        for j = 1, #g, 2 do
          if g[j] == 'name' then name = g[j + 1] elseif g[j] == 'last-delivered-id' then delivered = g[j + 1] end
        end
        if name == group then last = delivered end
      end
    end
    if last then
      for _, e in ipairs(redis.call('XRANGE', KEYS[i], '(' .. last, '+', 'COUNT', left)) do
        local id = split_id(e[1])
        if id[1] >= cutoff then break end
        table.insert(aged[i], id)
      end
    end
  end
  local counts = {}
  for i = 1, #KEYS do counts[i] = 0 end
  for _ = 1, left do  -- merge the bands' aged heads, oldest first
    local best, best_id = nil, nil
    for i = 1, #KEYS do
      local id = aged[i][counts[i] + 1]
      if id and (best == nil or id[1] < best_id[1] or (id[1] == best_id[1] and id[2] < best_id[2])) then
        best, best_id = i, id
      end
    end
    if best == nil then break end
    counts[best] = counts[best] + 1
  end
  for i = 1, #KEYS do
    if counts[i] > 0 then take(i, counts[i], 1) end
  end
end
for i = 1, #KEYS do
  if left <= 0 then break end
  take(i, left, 0)
end
return out
"""


# Publish a step's events: XADD each to its router's results stream (MAXLEN ~), and after a final one
# XACK + XDEL its entry; then refresh each results stream's TTL. One command, so the worker packs and
# parses one reply per step rather than one per event (redis-py's per-command cost dominated).
# KEYS: the band streams, then the results streams. ARGV: maxlen, ttl, group, number of band streams,
# the 4 field names (redis_protocol's F_RID, F_SEQ, F_EVENT, F_ENTRY), then per event 7 values:
# results KEYS index, rid, seq, event bytes, run id, band KEYS index (0: not final), stream entry id.
PUBLISH = """
local maxlen, ttl, group, bands = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
for i = 9, #ARGV, 7 do
  redis.call('XADD', KEYS[tonumber(ARGV[i])], 'MAXLEN', '~', maxlen, '*',
             ARGV[5], ARGV[i + 1], ARGV[6], ARGV[i + 2], ARGV[7], ARGV[i + 3], ARGV[8], ARGV[i + 4])
  local band = tonumber(ARGV[i + 5])
  if band > 0 then
    redis.call('XACK', KEYS[band], group, ARGV[i + 6])
    redis.call('XDEL', KEYS[band], ARGV[i + 6])
  end
end
for k = bands + 1, #KEYS do
  redis.call('EXPIRE', KEYS[k], ttl)
end
return 0
"""


HANDED_BACK_IDLE_MS = 24 * 3600 * 1000  # idle enough for any worker's next XAUTOCLAIM


def stream_id_order(stream_id: str) -> tuple[int, int]:
    """A stream entry id ("ms-seq") as a key that sorts the way Redis orders ids."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class QueueEntry:
    """One requests-stream entry: a request to run, and where its events go."""

    entry_id: str  # the run id: the engine's request id, results' `entry`, what cancel:{rid} holds
    rid: str
    router: str
    enqueued_ms: float
    request: router_pb2.RouteRequest | None  # None: the payload is not a RouteRequest
    band: str
    stream_id: str  # the id within the band's stream
    deliveries: int = 1  # how many workers have taken it: 1, plus one per take-over
    cancelled: bool = False  # cancel:{rid} named this run when it was taken: drop it, run nothing

    @classmethod
    def parse(cls, band: str, stream_id: bytes | str, fields: dict[bytes, bytes]) -> "QueueEntry":
        try:
            request: router_pb2.RouteRequest | None = router_pb2.RouteRequest.FromString(fields.get(F_PAYLOAD.encode(), b""))
        except DecodeError:
            request = None
        try:
            enqueued_ms = float(text(fields.get(F_ENQUEUED_MS.encode())))
        except ValueError:
            enqueued_ms = 0.0
        return cls(run_id(band, text(stream_id)), text(fields.get(F_RID.encode())), text(fields.get(F_ROUTER.encode())),
                   enqueued_ms, request, band, text(stream_id))

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
    def __init__(self, client: aioredis.Redis, model: str, consumer: str, results_maxlen: int, results_ttl_s: int,
                 band_max_wait_ms: int = 0):
        self.client = client
        self.model = model
        self.consumer = consumer
        self.streams = {band: requests_stream(model, band) for band in BANDS}  # highest band first
        self.results_maxlen = results_maxlen
        self.results_ttl_s = results_ttl_s
        self.band_max_wait_ms = band_max_wait_ms  # 0: strict bands (READ_BANDS)
        self._touch = client.register_script(TOUCH_OWN_ENTRIES)
        self._read_bands = client.register_script(READ_BANDS)
        self._publish = client.register_script(PUBLISH)

    async def ensure_group(self) -> None:
        await ensure_group(self.client, self.model)

    async def _read(self, streams: list[str], count: int, block_ms: int | None = None) -> list[QueueEntry]:
        """XREADGROUP `>` of `streams` (COUNT applies to each), parsed."""
        try:
            response = await self.client.xreadgroup(WORKERS_GROUP, self.consumer, {s: ">" for s in streams},
                                                    count=count, block=block_ms)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            # A stream was deleted under us (FLUSHDB, an operator): make them again and carry on.
            await self.ensure_group()
            return []
        band_of_stream = {stream: band for band, stream in self.streams.items()}
        return [QueueEntry.parse(band_of_stream[text(stream)], eid, fields)
                for stream, messages in response or [] for eid, fields in messages if fields]

    async def _read_without_blocking(self, count: int) -> list[QueueEntry]:
        """Up to `count` new entries in one round trip (READ_BANDS): those waiting longer than
        band_max_wait_ms first, oldest first, then the highest band first."""
        bands = list(self.streams)
        try:
            response = await self._read_bands(keys=list(self.streams.values()),
                                              args=[WORKERS_GROUP, self.consumer, count, self.band_max_wait_ms])
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self.ensure_group()  # as in _read: a stream was deleted under us
            return []
        aged: list[QueueEntry] = []
        in_band_order: list[QueueEntry] = []
        for index, messages, for_age in response or []:
            taken = [QueueEntry.parse(bands[int(index) - 1], eid, dict(zip(flat[::2], flat[1::2])))
                     for eid, flat in messages if flat]
            (aged if int(for_age) else in_band_order).extend(taken)
        aged.sort(key=lambda e: (stream_id_order(e.stream_id), bands.index(e.band)))
        return aged + in_band_order

    async def read_new(self, count: int, block_ms: int | None) -> list[QueueEntry]:
        """Up to `count` never-delivered entries, highest band first (FIFO within a band; with
        band_max_wait_ms, entries waiting longer than that come first, oldest first), now owned by
        this consumer. They leave the queue, so their prompt tokens leave the model's queued-token
        budget; each is marked `cancelled` if the router cancelled that run meanwhile. `block_ms`: when
        every band is empty, wait that long for an entry in any of them."""
        entries = await self._read_without_blocking(count)
        if not entries and block_ms:
            # COUNT applies per stream: should several bands fill at once (one transaction adding to
            # several), the lowest-band extras are handed back below so no more than `count` run here.
            entries = await self._read(list(self.streams.values()), count, block_ms)
            entries.sort(key=lambda e: BANDS.index(e.band))
        if extra := entries[count:]:
            await self.release([e.entry_id for e in extra], idle_ms=HANDED_BACK_IDLE_MS)
        entries = entries[:count]
        tokens = sum(e.prompt_tokens for e in entries + extra)  # extras too: whoever takes them over won't count them
        if not tokens and not entries:
            return []
        # One round trip for the budget and the cancel keys: a busy worker takes new entries every step.
        pipe = self.client.pipeline(transaction=False)
        if tokens:
            pipe.decrby(queued_tokens_key(self.model), tokens)
        self._read_cancel_keys(pipe, entries)
        replies = await pipe.execute()
        return self._with_cancels(entries, replies[1:] if tokens else replies)

    async def claim_dead(self, count: int, min_idle_ms: int) -> list[QueueEntry]:
        """Take over up to `count` entries nobody has re-claimed for `min_idle_ms` (their worker died),
        highest band first. Their tokens already left the queued-token budget when first taken; each is
        marked `cancelled` as read_new's are."""
        entries: list[QueueEntry] = []
        for band, stream in self.streams.items():
            if len(entries) >= count:
                break
            _next, messages, *_deleted = await self.client.xautoclaim(stream, WORKERS_GROUP, self.consumer, min_idle_ms,
                                                                      start_id="0-0", count=count - len(entries))
            claimed = [QueueEntry.parse(band, eid, fields) for eid, fields in messages if fields]
            entries += await self._with_deliveries(stream, claimed)
        return entries

    async def _with_deliveries(self, stream: str, entries: list[QueueEntry]) -> list[QueueEntry]:
        """The entries with their delivery counts (XAUTOCLAIM counted this take-over) and cancel keys."""
        if not entries:
            return entries
        pipe = self.client.pipeline(transaction=False)
        for e in entries:
            pipe.xpending_range(stream, WORKERS_GROUP, e.stream_id, e.stream_id, 1)
        self._read_cancel_keys(pipe, entries)
        *pending, cancels = await pipe.execute()
        entries = [replace(e, deliveries=int(p[0]["times_delivered"]) if p else e.deliveries)
                   for e, p in zip(entries, pending)]
        return self._with_cancels(entries, [cancels])

    @staticmethod
    def _read_cancel_keys(pipe, entries: Sequence[QueueEntry]) -> None:
        if entries:
            pipe.mget([cancel_key(e.rid) for e in entries])

    @staticmethod
    def _with_cancels(entries: list[QueueEntry], cancels: list[list[bytes | None]]) -> list[QueueEntry]:
        """`entries`, marked cancelled where their cancel key (the MGET reply in `cancels`, if any) names
        their run."""
        values = cancels[0] if cancels else [None] * len(entries)
        return [replace(e, cancelled=True) if text(value) == e.entry_id else e for e, value in zip(entries, values)]

    async def cancelled(self, entries: Sequence[QueueEntry]) -> set[str]:
        """Run ids among `entries` whose request the router cancelled (one MGET)."""
        if not entries:
            return set()
        values = await self.client.mget([cancel_key(e.rid) for e in entries])
        return {e.entry_id for e, value in zip(entries, values) if text(value) == e.entry_id}

    async def publish(self, publications: Iterable[Publication]) -> None:
        """Every event of a step in one round trip (the PUBLISH script, so atomic too); a final event
        acknowledges its entry right after it, and deletes it so the streams hold only live entries
        (the router counts queued = XLEN - pending)."""
        band_index = {band: i for i, band in enumerate(self.streams, start=1)}
        results: dict[str, int] = {}  # results stream -> its KEYS index, after the band streams
        args: list[str | int | bytes] = []
        for p in publications:
            index = results.setdefault(results_stream(p.entry.router), len(self.streams) + len(results) + 1)
            args += [index, p.entry.rid, p.event.seq, p.event.SerializeToString(), p.entry.entry_id,
                     band_index[p.entry.band] if p.final else 0, p.entry.stream_id]
        if not results:
            return
        await self._publish(keys=[*self.streams.values(), *results],
                            args=[self.results_maxlen, self.results_ttl_s, WORKERS_GROUP, len(self.streams),
                                  F_RID, F_SEQ, F_EVENT, F_ENTRY, *args])

    async def touch(self, entry_ids: Sequence[str]) -> list[str]:
        """Reset the idle time of our running entries (run ids); returns those another worker has
        taken over."""
        if not entry_ids:
            return []
        index = {band: i for i, band in enumerate(self.streams, start=1)}
        args: list[str | int] = [WORKERS_GROUP, self.consumer]
        for entry_id in entry_ids:
            band, stream_id = split_run_id(entry_id)
            args += [index[band], stream_id, entry_id]
        lost = await self._touch(keys=list(self.streams.values()), args=args)
        return [text(x) for x in lost]

    async def release(self, entry_ids: Sequence[str], idle_ms: int) -> None:
        """Hand entries (run ids) back unfinished (drain timeout): mark them idle for `idle_ms`, so the
        next XAUTOCLAIM of a live worker takes them at once instead of a heartbeat expiry later."""
        by_band: dict[str, list[str]] = defaultdict(list)
        for entry_id in entry_ids:
            band, stream_id = split_run_id(entry_id)
            by_band[band].append(stream_id)
        for band, stream_ids in by_band.items():
            await self.client.xclaim(self.streams[band], WORKERS_GROUP, self.consumer, 0, stream_ids,
                                     idle=idle_ms, justid=True)

    async def forget_consumer(self) -> None:
        """Leave the consumer group (after a clean drain: nothing is pending under this name, and
        deleting a consumer would drop its pending entries)."""
        for stream in self.streams.values():
            if await self.client.xpending_range(stream, WORKERS_GROUP, "-", "+", 1, consumername=self.consumer):
                return
        for stream in self.streams.values():
            await self.client.xgroup_delconsumer(stream, WORKERS_GROUP, self.consumer)
