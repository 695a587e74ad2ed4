"""Test doubles for the gateway's surroundings: an event loop on a thread (the servers under test run
there while tests use plain blocking grpc clients), and a scripted RouterService.

The fake router picks its behaviour from the request id's prefix, so one router serves every test.
"""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Coroutine, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_interceptor.exceptions import NotFound, ResourceExhausted

from inferline.events import EventFold
from inferline.grpc.errors import ErrorInterceptor
from inferline.v1 import common_pb2, router_pb2, router_pb2_grpc
from router.multiplex import RequestDeadline, RouteManySession

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@dataclass
class Seen:
    """What the fake router observed about one request id."""
    request: router_pb2.RouteRequest
    timeout_s: float | None
    cancelled: threading.Event = field(default_factory=threading.Event)


TEXT = ["Hello", ",", " world"]


class FakeRouter(router_pb2_grpc.RouterServiceServicer):
    """Prefixes: `ok-` three events then a final one; `busy-` RESOURCE_EXHAUSTED; `gone-` NOT_FOUND;
    `slow-` one event then waits (to be cancelled); `delay-` takes 1 s in all; `cut-` ends without a
    final event. RouteMany runs each request through Route, as the real router does (router/multiplex.py);
    final_only requests get the events folded into one."""

    def __init__(self) -> None:
        self.seen: dict[str, Seen] = {}

    async def Route(self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext | RequestDeadline
                    ) -> AsyncIterator[router_pb2.RouteEvent]:
        fold = EventFold() if request.final_only else None
        async for event in self._script(request, context):
            if fold is None or (event := fold.add(event)) is not None:
                yield event

    async def RouteMany(self, request_iterator: AsyncIterator[router_pb2.RouteManyRequest],
                        context: grpc.aio.ServicerContext) -> AsyncIterator[router_pb2.RouteManyResponse]:
        async for response in RouteManySession(self.Route).replies(request_iterator):
            yield response

    async def _script(self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext | RequestDeadline
                      ) -> AsyncIterator[router_pb2.RouteEvent]:
        rid = request.request_id
        seen = Seen(request, context.time_remaining())
        self.seen[rid] = seen
        if rid.startswith("busy-"):
            raise ResourceExhausted("queue of 'smollm2-135m' is full (64 requests)")
        if rid.startswith("gone-"):
            raise NotFound("model: no worker serves 'smollm2-135m'")
        try:
            for seq, text in enumerate(TEXT):
                yield router_pb2.RouteEvent(request_id=rid, seq=seq, token_ids=[100 + seq], text_delta=text,
                                            logprobs=[common_pb2.TokenLogprob(token_id=100 + seq, logprob=-0.5)])
                if rid.startswith("slow-"):
                    await asyncio.sleep(60)
            if rid.startswith("delay-"):
                await asyncio.sleep(1.0)
            if rid.startswith("cut-"):
                return
            yield router_pb2.RouteEvent(
                request_id=rid, seq=len(TEXT), finish_reason=common_pb2.FINISH_REASON_LENGTH,
                usage=common_pb2.Usage(prompt_tokens=len(request.prompt_token_ids), completion_tokens=len(TEXT)),
                timings=common_pb2.Timings(queue_ms=1.0, time_to_first_token_ms=2.0, total_ms=3.0))
        except asyncio.CancelledError:
            seen.cancelled.set()
            raise

    def wait_seen(self, rid: str, timeout: float = 10) -> Seen:
        deadline = time.monotonic() + timeout
        while rid not in self.seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the router never saw {rid}")
            time.sleep(0.01)
        return self.seen[rid]


async def start_fake_router(router: FakeRouter) -> tuple[grpc.aio.Server, int]:
    """Serves grpc.health.v1 too (SERVING), as the real router does: the gateway's health follows it."""
    server = grpc.aio.server(interceptors=[ErrorInterceptor(status_on_unknown_exception=grpc.StatusCode.INTERNAL)])
    router_pb2_grpc.add_RouterServiceServicer_to_server(router, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port
