"""The router's one reader of its results stream: every worker publishes this router's events to
results:{router_id}; this task XREADs them (blocking) and hands each to the queue of the request it
belongs to. Events of requests no longer here (finished, cancelled) are dropped."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

import redis.asyncio as aioredis
import structlog
from google.protobuf.message import DecodeError
from redis.exceptions import RedisError

from inferline.v1 import router_pb2
from inferline.redis_protocol import F_ENTRY, F_EVENT, F_RID, results_stream, text

log = structlog.get_logger(__name__)

READ_COUNT = 1024  # events per XREAD; more wait for the next one


@dataclass(frozen=True)
class ResultMessage:
    entry_id: str  # the requests-stream entry (one run of the request) the event belongs to
    event: router_pb2.RouteEvent


class DuplicateRequestError(Exception):
    pass


class ResultsFanout:
    def __init__(self, client: aioredis.Redis, router_id: str, block_ms: int,
                 on_health: Callable[[bool], None] = lambda ok: None):
        self.client = client
        self.stream = results_stream(router_id)
        self.block_ms = block_ms
        self.on_health = on_health
        self._inboxes: dict[str, asyncio.Queue[ResultMessage]] = {}  # by request id

    def subscribe(self, request_id: str) -> asyncio.Queue[ResultMessage]:
        """Register a request before it is queued, so none of its events can arrive unseen."""
        if request_id in self._inboxes:
            raise DuplicateRequestError(request_id)
        inbox: asyncio.Queue[ResultMessage] = asyncio.Queue()
        self._inboxes[request_id] = inbox
        return inbox

    def unsubscribe(self, request_id: str) -> None:
        self._inboxes.pop(request_id, None)

    async def run(self) -> None:
        # Router ids are unique per process, so the stream holds only events meant for this process.
        last_id = "0-0"
        healthy = True
        while True:
            try:
                response = await self.client.xread({self.stream: last_id}, count=READ_COUNT, block=self.block_ms)
            except RedisError as e:  # the client already retried with backoff; stay up and keep trying
                if healthy:
                    log.error("results_read_failed", error=str(e))
                    healthy = False
                    self.on_health(False)
                await asyncio.sleep(self.block_ms / 1000)
                continue
            if not healthy:
                log.info("results_read_recovered")
                healthy = True
                self.on_health(True)
            for _stream, messages in response or []:
                for message_id, fields in messages:
                    last_id = text(message_id)
                    self._dispatch(fields)

    def _dispatch(self, fields: dict[bytes, bytes]) -> None:
        inbox = self._inboxes.get(text(fields.get(F_RID.encode())))
        if inbox is None:
            return
        try:
            event = router_pb2.RouteEvent.FromString(fields.get(F_EVENT.encode(), b""))
        except DecodeError:
            log.warning("results_event_unreadable", request_id=text(fields.get(F_RID.encode())))
            return
        inbox.put_nowait(ResultMessage(text(fields.get(F_ENTRY.encode())), event))
