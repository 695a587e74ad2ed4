"""The gateway's transport to the router: every request multiplexed over a few long-lived RouteMany calls
(router.proto) instead of a grpc call of its own, since per-call work (call setup, metadata, deadline
timers, completion-queue operations) was most of the gateway's and the router's CPU per request.

Each RouteMany call has a writer task, sending whatever starts and cancels are ready as one message (at
most one per write interval: under load a message carries several requests, which is where most of the
saving is), and a reader task, handing each reply to its request's queue by call_id.
A request whose caller goes away (its task cancelled, its deadline passed) sends a cancel. A call that
breaks or ends fails each request still on it with UNAVAILABLE naming the cause; the next request opens
a fresh one. A router that is shutting down says so (draining): its call takes no new requests and
finishes the rest, while new ones go on a fresh call.
"""
from __future__ import annotations

import asyncio
import itertools
from typing import AsyncIterator

import grpc
import structlog

from inferline.outbox import Outbox
from inferline.v1 import router_pb2, router_pb2_grpc

log = structlog.get_logger(__name__)

# Starts wait for the next message once one holds this many bytes: far below the router's receive
# limit (4 MiB), since a message over it would fail the whole call and every request on it.
MAX_START_BATCH_BYTES = 1 << 20
MIN_TIMEOUT_S = 0.001
STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


class RouterError(Exception):
    """How a routed request ended when not with its final event: the router's status for it, or
    UNAVAILABLE when its call broke."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


Reply = router_pb2.RouteReply | RouterError


class _ManyCall:
    """One RouteMany call and the requests in flight on it."""

    def __init__(self, stub: router_pb2_grpc.RouterServiceStub, write_interval_s: float):
        self._call = stub.RouteMany()
        self._write_interval_s = write_interval_s
        self._inboxes: dict[int, asyncio.Queue[Reply]] = {}
        self._call_ids = itertools.count()
        self._outbox = Outbox(router_pb2.RouteManyRequest, MAX_START_BATCH_BYTES)
        self._ready = asyncio.Event()
        self.accepting = True  # False once it broke, ended or the router said it is draining
        self._writer = asyncio.create_task(self._write(), name="router-many-writer")
        self.reader = asyncio.create_task(self._read(), name="router-many-reader")

    def start(self, request: router_pb2.RouteRequest, timeout_s: float | None) -> tuple[int, asyncio.Queue[Reply]]:
        call_id = next(self._call_ids)
        inbox: asyncio.Queue[Reply] = asyncio.Queue()
        self._inboxes[call_id] = inbox
        # A deadline already passed still goes as one (0 would mean none).
        timeout = 0.0 if timeout_s is None else max(timeout_s, MIN_TIMEOUT_S)
        self._outbox.add("starts", router_pb2.RouteStart(call_id=call_id, request=request, timeout_s=timeout))
        self._ready.set()
        return call_id, inbox

    def finish(self, call_id: int, cancel: bool) -> None:
        """The request is done with; `cancel`: before its end, so the router should stop it."""
        if self._inboxes.pop(call_id, None) is not None and cancel:
            self._outbox.last.cancels.append(call_id)
            self._ready.set()

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        last_write = -self._write_interval_s
        try:
            while True:
                await self._ready.wait()
                # At most one message per interval: under load, the starts of that interval share it
                # (a write costs a syscall here and a read op in the router); after a pause, at once.
                if (wait_s := last_write + self._write_interval_s - loop.time()) > 0:
                    await asyncio.sleep(wait_s)
                last_write = loop.time()
                self._ready.clear()
                while (message := self._outbox.take()) is not None:
                    await self._call.write(message)
        except Exception as e:  # the call is over: the reader learns why and fails what is in flight
            log.debug("router_many_write_failed", error=repr(e))

    async def _read(self) -> None:
        cause = "the gateway closed the call"  # when cancelled
        try:
            async for message in self._call:
                if message.draining and self.accepting:
                    self.accepting = False
                    log.info("router_many_draining", in_flight=len(self._inboxes))
                for reply in message.replies:
                    inbox = self._inboxes.get(reply.call_id)
                    if inbox is not None:  # else: finished here already (cancelled)
                        inbox.put_nowait(reply)
            cause = "the router ended the call"
        except grpc.aio.AioRpcError as e:
            cause = f"{e.code().name}: {e.details()}"
        except Exception as e:
            log.exception("router_many_read_failed")
            cause = repr(e)
        finally:
            self._break(cause)

    def _break(self, cause: str) -> None:
        self.accepting = False
        if self._inboxes:
            log.warning("router_many_broken", cause=cause, in_flight=len(self._inboxes))
        for inbox in self._inboxes.values():
            inbox.put_nowait(RouterError(grpc.StatusCode.UNAVAILABLE, f"router call ended ({cause})"))
        self._inboxes.clear()
        self._writer.cancel()
        self._call.cancel()

    async def close(self) -> None:
        self.reader.cancel()
        await asyncio.gather(self.reader, self._writer, return_exceptions=True)


class RouterMux:
    """Routes requests over `calls` RouteMany calls, in turn; each sends at most one message per
    `write_interval_s`."""

    def __init__(self, channel: grpc.aio.Channel, calls: int = 1, write_interval_s: float = 0.0):
        self._stub = router_pb2_grpc.RouterServiceStub(channel)
        self._write_interval_s = write_interval_s
        self._slots: list[_ManyCall | None] = [None] * calls
        self._turn = 0
        self._open: set[_ManyCall] = set()  # in the slots, or draining

    async def route(self, request: router_pb2.RouteRequest, timeout_s: float | None
                    ) -> AsyncIterator[router_pb2.RouteEvent]:
        """The request's events as the router relays them; raises RouterError if it ends with another
        status. Closing this early (the caller cancelled, its deadline passed) cancels the request."""
        call = self._call()
        call_id, inbox = call.start(request, timeout_s)
        ended = False
        try:
            while True:
                reply = await inbox.get()
                if isinstance(reply, RouterError):
                    ended = True
                    raise reply
                if reply.HasField("event"):
                    yield reply.event
                if reply.HasField("status"):
                    ended = True
                    if reply.status.code:
                        raise RouterError(STATUS_CODES.get(reply.status.code, grpc.StatusCode.UNKNOWN),
                                          reply.status.message)
                    return
        finally:
            call.finish(call_id, cancel=not ended)

    def _call(self) -> _ManyCall:
        slot = self._turn
        self._turn = (slot + 1) % len(self._slots)
        call = self._slots[slot]
        if call is None or not call.accepting:
            call = self._slots[slot] = _ManyCall(self._stub, self._write_interval_s)
            self._open.add(call)
            call.reader.add_done_callback(lambda _: self._open.discard(call))
        return call

    async def close(self) -> None:
        """Cancels the calls: every request still on them fails (call after the server stopped)."""
        await asyncio.gather(*(call.close() for call in list(self._open)))
