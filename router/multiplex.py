"""RouteMany: many requests over one long-lived call (router.proto). Each started request runs as a task
through the very code of a Route call (the `route` function given, RouterService.Route), with a
RequestDeadline where grpc would pass the call's context; its events and its end go back as
RouteReplies, batched: whatever is ready when the call can take the next message goes in it.

A cancel command, the request's own timeout and the call ending (cancelled, broken, or cut at the end
of the router's shutdown grace) cancel the task exactly as grpc cancels a Route handler, so Route's
own clean-up sets the worker-side cancel key. The client closing its side, or drain() (the router
shutting down), lets the requests in flight finish and then ends the call.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import AsyncIterator, Callable

import grpc
import structlog
from grpc_interceptor.exceptions import GrpcException

from inferline.events import is_final
from inferline.grpc.errors import as_grpc_exception
from inferline.logs import request_context
from inferline.outbox import Outbox
from inferline.v1 import router_pb2

log = structlog.get_logger(__name__)

# Replies wait for the next message once one holds this many bytes: far below grpc's default receive
# limit (4 MiB; the gateway sets none), since a message over a client's limit would fail the whole call
# and every request on it.
MAX_REPLY_BATCH_BYTES = 1 << 20
DRAINING = "router: shutting down; send new requests on another call"


class RequestDeadline:
    """What Route asks of its grpc context (count_outcome: the time left, to tell a passed deadline from a
    caller who went away), for one request of a RouteMany call."""
    __slots__ = ("at",)

    def __init__(self, timeout_s: float):
        self.at = asyncio.get_running_loop().time() + timeout_s if timeout_s > 0 else None  # event-loop clock

    def time_remaining(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - asyncio.get_running_loop().time())


Route = Callable[[router_pb2.RouteRequest, RequestDeadline], AsyncIterator[router_pb2.RouteEvent]]


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status the server's ErrorInterceptor would give a Route call that raised `exc`."""
    mapped = exc if isinstance(exc, GrpcException) else as_grpc_exception(exc)
    if mapped is not None:
        return mapped.status_code, mapped.details
    log.error("unhandled_error", method="RouteMany", exc_info=exc)
    return grpc.StatusCode.INTERNAL, repr(exc)


class RouteManySession:
    """One RouteMany call: its requests in flight, by the client's call_id, and the replies not yet sent."""

    def __init__(self, route: Route):
        self._route = route
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._cancelled: set[int] = set()  # by a cancel command: they get a CANCELLED reply
        self._outbox = Outbox(router_pb2.RouteManyResponse, MAX_REPLY_BATCH_BYTES)
        self._ready = asyncio.Event()  # something to send, or the call may be able to end
        self._closing = False  # no more starts: the client closed its side, or drain()
        self._draining = False
        self.started = 0  # requests started on the call

    async def replies(self, commands: AsyncIterator[router_pb2.RouteManyRequest]
                      ) -> AsyncIterator[router_pb2.RouteManyResponse]:
        """The call's responses; ends once no request is left after the client closed its side (or drain).
        Closing it early (the call cancelled or broken) cancels every request still running."""
        reader = asyncio.create_task(self._read(commands), name="route-many-commands")
        try:
            while True:
                if (message := self._outbox.take()) is not None:  # replies made while it is written go in the next
                    yield message
                elif self._closing and not self._tasks:
                    return
                else:
                    self._ready.clear()
                    await self._ready.wait()
        finally:
            reader.cancel()
            for task in self._tasks.values():
                task.cancel()

    def drain(self) -> None:
        """The router is stopping: tell the client, refuse new starts, end the call once the rest finished."""
        if not self._draining:
            self._draining = self._closing = True
            self._outbox.last.draining = True
            self._ready.set()

    async def _read(self, commands: AsyncIterator[router_pb2.RouteManyRequest]) -> None:
        try:
            async for message in commands:
                for start in message.starts:
                    self._start(start)
                for call_id in message.cancels:
                    self._cancel(call_id)
        except Exception as e:  # the call broke: grpc cancels the handler, and replies() with it
            log.info("route_many_commands_ended", error=repr(e))
        finally:
            self._closing = True
            self._ready.set()

    def _start(self, start: router_pb2.RouteStart) -> None:
        call_id = start.call_id
        if self._draining:
            self._end(call_id, grpc.StatusCode.UNAVAILABLE, DRAINING)
        elif call_id in self._tasks:
            self._end(call_id, grpc.StatusCode.INVALID_ARGUMENT,
                      f"call_id: {call_id} is already in flight on this call")
        else:
            task = asyncio.create_task(self._run(call_id, start.request, start.timeout_s))
            self.started += 1
            self._tasks[call_id] = task
            # A callback, not a finally: a task cancelled before its first step never runs its code.
            task.add_done_callback(functools.partial(self._finished, call_id))

    def _cancel(self, call_id: int) -> None:
        task = self._tasks.get(call_id)
        if task is not None:
            self._cancelled.add(call_id)
            task.cancel()

    async def _run(self, call_id: int, request: router_pb2.RouteRequest, timeout_s: float) -> None:
        """Runs the request, relaying its events but the final one: that comes back with the status."""
        deadline = RequestDeadline(timeout_s)
        final = None
        with request_context(request.request_id):
            try:
                async with asyncio.timeout_at(deadline.at) as timer:
                    async with contextlib.aclosing(self._route(request, deadline)) as events:
                        async for event in events:
                            if is_final(event):  # goes with the status: one reply ends the request
                                final = event
                            else:
                                self._reply(call_id, event)
                code, message = grpc.StatusCode.OK, ""
            except TimeoutError as e:
                code, message = (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") if timer.expired() \
                    else status_of(e)
            except Exception as e:
                code, message = status_of(e)
        self._end(call_id, code, message, final)

    def _finished(self, call_id: int, task: asyncio.Task[None]) -> None:
        self._tasks.pop(call_id, None)
        if task.cancelled():
            if call_id in self._cancelled:
                self._end(call_id, grpc.StatusCode.CANCELLED, "cancelled by the client")
        elif (error := task.exception()) is not None:  # a bug here: still end the request, never leave it hanging
            self._end(call_id, *status_of(error))
        self._cancelled.discard(call_id)
        self._ready.set()

    def _end(self, call_id: int, code: grpc.StatusCode, message: str,
             final: router_pb2.RouteEvent | None = None) -> None:
        self._reply(call_id, final, router_pb2.RouteStatus(code=code.value[0], message=message))

    def _reply(self, call_id: int, event: router_pb2.RouteEvent | None,
               status: router_pb2.RouteStatus | None = None) -> None:
        self._outbox.add("replies", router_pb2.RouteReply(call_id=call_id, event=event, status=status))
        self._ready.set()
