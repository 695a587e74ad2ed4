"""RouterService: Route (admit, queue, relay the events), RouteFinal (Route with final_only, as one unary
call), RouteMany (many Routes over one long-lived call: the gateway's transport, router/multiplex.py)
and GetQueueStats.

Route's statuses, all decided before anything is queued unless noted:
- INVALID_ARGUMENT: request_id, model, prompt_token_ids or parameters missing; or (after queueing)
  the worker's engine refused a parameter value (an error event: RouteEvent.error_code/_message).
- NOT_FOUND: no live worker serves the model (no unexpired heartbeat) and the model is not in the
  router's scale_from_zero_models: fail fast, as for an unknown model, rather than queue a request
  nobody may ever take. A model whose workers are all restarting answers NOT_FOUND for those
  seconds; callers may retry. A scale_from_zero_models model with no live worker is queued instead
  (limits apply as usual) and waits for an autoscaler to start a worker, or for its deadline.
- RESOURCE_EXHAUSTED: the model's queue is at max_queue_depth, or the prompt would push its queued
  tokens past max_queued_tokens (the message names the limit).
- ALREADY_EXISTS: an idempotent request_id already used for a different request (router/idempotency.py);
  or a non-idempotent id (the gateway's own, unique) this router already has in flight.
- Any other error event's code, e.g. INTERNAL when a worker failed to start the request.
- DEADLINE_EXCEEDED / CANCELLED (after queueing): the caller's deadline passed or it went away, e.g.
  while its request waited for a worker to start.
An idempotent request whose id is already claimed follows the claimant's events instead of queueing.
Cancelling the call or passing its deadline sets cancel:{rid} to the entry id of this run: a worker
that takes the entry later (within cancel_ttl_s) drops it without running it.

A request on a RouteMany call runs through Route itself, with a RequestDeadline in place of the call's
context: the same statuses, metrics and log lines, its status sent in a RouteReply; a cancel command, its
timeout or the call ending cancel it as above.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

import grpc
import redis.asyncio as aioredis
import structlog
from grpc_interceptor.exceptions import AlreadyExists, GrpcException, InvalidArgument

from inferline.logs import request_context
from inferline.metrics import count_outcome
from inferline.v1 import router_pb2, router_pb2_grpc
from router import metrics
from router.admission import Admission
from router.idempotency import Claim, IdempotencyStore, fingerprint
from router.multiplex import RequestDeadline, RouteManySession
from router.results import DuplicateRequestError, ResultsFanout
from inferline.events import EventFold
from router.sequencing import EventOrder, status_of_error
from inferline.redis_protocol import REQUESTS_STREAM_PATTERNS, band_of, cancel_key, model_of_requests_stream, text

log = structlog.get_logger(__name__)

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


def check_request(request: router_pb2.RouteRequest) -> None:
    """Structure only; the values of the parameters are the engine's to judge (an error event)."""
    for field, ok in (("request_id", request.request_id), ("model", request.model),
                      ("prompt_token_ids", len(request.prompt_token_ids)), ("parameters", request.HasField("parameters"))):
        if not ok:
            raise InvalidArgument(f"{field}: is required")


class RouterService(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, client: aioredis.Redis, admission: Admission, results: ResultsFanout,
                 idempotency: IdempotencyStore, cancel_ttl_s: int):
        self.client = client
        self.idempotency = idempotency
        self.admission = admission
        self.results = results
        self.cancel_ttl_s = cancel_ttl_s
        self._cleanups: set[asyncio.Task] = set()
        self._sessions: set[RouteManySession] = set()
        self._draining = False

    async def Route(self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext | RequestDeadline
                    ) -> AsyncIterator[router_pb2.RouteEvent]:
        with count_outcome(context, metrics.REJECTIONS, metrics.CANCELLATIONS, metrics.IN_FLIGHT):
            check_request(request)
            with request_context(request.request_id):
                order = EventOrder()
                fold = EventFold() if request.final_only else None
                async with contextlib.aclosing(self._events(request, order)) as events:
                    async for event in events:
                        if fold is not None and (event := fold.add(event)) is None:
                            continue
                        if event.error_code:
                            log.info("request_failed", code=event.error_code, error=event.error_message)
                            raise GrpcException(event.error_message, status_of_error(event))
                        yield event
                log.info("request_done", finish_reason=event.finish_reason,
                         completion_tokens=event.usage.completion_tokens)

    async def RouteFinal(self, request: router_pb2.RouteRequest,
                         context: grpc.aio.ServicerContext) -> router_pb2.RouteEvent:
        request.final_only = True
        final = None
        async for event in self.Route(request, context):  # one: the folded last event (or a status raised)
            final = event
        return final

    async def RouteMany(self, request_iterator: AsyncIterator[router_pb2.RouteManyRequest],
                        context: grpc.aio.ServicerContext) -> AsyncIterator[router_pb2.RouteManyResponse]:
        session = RouteManySession(self.Route)
        if self._draining:
            session.drain()
        self._sessions.add(session)
        log.info("route_many_started", peer=context.peer(), calls=len(self._sessions))
        try:
            async with contextlib.aclosing(session.replies(request_iterator)) as replies:
                async for response in replies:
                    yield response
        finally:
            self._sessions.discard(session)
            log.info("route_many_ended", peer=context.peer(), requests=session.started)

    def drain(self) -> None:
        """Shutting down: RouteMany calls take no new requests and end once theirs finished (so the
        server's grace period is not spent waiting on calls that would never end)."""
        self._draining = True
        for session in self._sessions:
            session.drain()

    async def _events(self, request: router_pb2.RouteRequest, order: EventOrder
                      ) -> AsyncIterator[router_pb2.RouteEvent]:
        """The request's events in order, each once, up to the final one: from its own run, or, for an
        idempotent id someone else claimed, from theirs (taking over should they give up)."""
        if not request.idempotent:
            async for event in self._run(request, order, record=False):
                yield event
            return
        rid, request_fingerprint = request.request_id, fingerprint(request)
        while not order.finished:
            claim = await self.idempotency.claim(rid, request_fingerprint)
            if claim is Claim.MISMATCH:
                raise AlreadyExists(f"request_id: {rid!r} was already used for a different request "
                                    "(another model, prompt or parameters)")
            if claim is Claim.CLAIMED:
                async for event in self._run(request, order, record=True):
                    yield event
                return
            log.info("request_following", delivered=order.next_seq)
            async for event in self.idempotency.follow(rid, order):
                yield event

    async def _run(self, request: router_pb2.RouteRequest, order: EventOrder, record: bool
                   ) -> AsyncIterator[router_pb2.RouteEvent]:
        """Queue one run of the request and relay its events; `record`: this run owns an idempotent
        id, and followers read what it delivers."""
        rid = request.request_id
        try:
            inbox = self.results.subscribe(rid)
        except DuplicateRequestError:
            raise AlreadyExists(f"request_id: {rid!r} is already in flight") from None
        enqueue: asyncio.Future[str] | None = None
        try:
            workers = await self.admission.require_workers(request.model)  # 0: a scale-from-zero model
            # Shielded: a caller cancelling mid-XADD must still learn the entry id, to cancel that run.
            enqueue = self.admission.enqueue(request)
            entry_id = await asyncio.shield(enqueue)
            metrics.ROUTES_QUEUED.labels(request.model, band_of(request.priority)).inc()
            if not workers:
                metrics.QUEUED_WITHOUT_WORKERS.labels(request.model).inc()
            log.info("request_queued", model=request.model, entry=entry_id, prompt_tokens=len(request.prompt_token_ids),
                     workers=workers)
            while not order.finished:
                message = await inbox.get()
                if message.entry_id != entry_id:  # another run of this request id
                    continue
                for event in order.accept(message.event):
                    if record:
                        await self.idempotency.record(rid, event)
                    yield event
        finally:
            self.results.unsubscribe(rid)
            if not order.finished:
                # The caller cancelled, its deadline passed, or it went away: stop the run wherever it
                # is, and let a follower (if any) take the id over. In a task of its own: this one may
                # be cancelled again.
                self._spawn(self._give_up(rid, enqueue, record))

    async def _give_up(self, rid: str, enqueue: asyncio.Future[str] | None, record: bool) -> None:
        with request_context(rid):
            if enqueue is not None:
                await self._cancel_run(rid, enqueue)
            if record:
                await self.idempotency.release(rid, "abandoned")

    async def _cancel_run(self, rid: str, enqueue: asyncio.Future[str]) -> None:
        try:
            entry_id = await enqueue
        except Exception:  # never queued (refused, Redis down): nothing to cancel
            return
        await self.client.set(cancel_key(rid), entry_id, ex=self.cancel_ttl_s)
        log.info("request_cancelled", entry=entry_id)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def finish_cleanups(self) -> None:
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)

    async def GetQueueStats(self, request: router_pb2.QueueStatsRequest,
                            context: grpc.aio.ServicerContext) -> router_pb2.QueueStatsResponse:
        # Models with a stream, and the scale-from-zero ones even before their first request (workers=0).
        models: set[str] = set(self.admission.scale_from_zero_models)
        for pattern in REQUESTS_STREAM_PATTERNS:  # every band: a model may have entries in one only
            models.update({model_of_requests_stream(text(k))
                           async for k in self.client.scan_iter(match=pattern, _type="stream")})
        states = [await self.admission.queue_state(m) for m in sorted(models)]
        return router_pb2.QueueStatsResponse(models=[
            router_pb2.ModelQueue(model=s.model, queued=s.queued, queued_tokens=s.queued_tokens, workers=s.workers)
            for s in states])
