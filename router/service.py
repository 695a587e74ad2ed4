"""RouterService: Route (admit, queue, relay the events) and GetQueueStats.

Route's statuses, all decided before anything is queued unless noted:
- INVALID_ARGUMENT: request_id, model, prompt_token_ids or parameters missing; or (after queueing)
  the worker's engine refused a parameter value (an error event: RouteEvent.error_code/_message).
- NOT_FOUND: no live worker serves the model (no unexpired heartbeat): fail fast, as for an unknown
  model, rather than queue a request nobody may ever take. A model whose workers are all restarting
  answers NOT_FOUND for those seconds; callers may retry.
- RESOURCE_EXHAUSTED: the model's queue is at max_queue_depth, or the prompt would push its queued
  tokens past max_queued_tokens (the message names the limit).
- ALREADY_EXISTS: this router has a call with the same request_id in flight. Per router only: the
  same id sent to two routers runs twice (each run its own entry; events never cross).
- Any other error event's code, e.g. INTERNAL when a worker failed to start the request.
Cancelling the call or passing its deadline sets cancel:{rid} to the entry id of this run.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

import grpc
import redis.asyncio as aioredis
import structlog
from grpc_interceptor.exceptions import AlreadyExists, GrpcException, InvalidArgument

from inferline.logs import request_context
from inferline.v1 import router_pb2, router_pb2_grpc
from router.admission import Admission
from router.results import DuplicateRequestError, ResultsFanout
from router.sequencing import EventOrder, is_final, status_of_error
from inferline.redis_protocol import REQUESTS_STREAM_PATTERNS, cancel_key, model_of_requests_stream, text

log = structlog.get_logger(__name__)

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


def check_request(request: router_pb2.RouteRequest) -> None:
    """Structure only; the values of the parameters are the engine's to judge (an error event)."""
    for field, ok in (("request_id", request.request_id), ("model", request.model),
                      ("prompt_token_ids", len(request.prompt_token_ids)), ("parameters", request.HasField("parameters"))):
        if not ok:
            raise InvalidArgument(f"{field}: is required")


class RouterService(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, client: aioredis.Redis, admission: Admission, results: ResultsFanout, cancel_ttl_s: int):
        self.client = client
        self.admission = admission
        self.results = results
        self.cancel_ttl_s = cancel_ttl_s
        self._cleanups: set[asyncio.Task] = set()

    async def Route(self, request: router_pb2.RouteRequest,
                    context: grpc.aio.ServicerContext) -> AsyncIterator[router_pb2.RouteEvent]:
        check_request(request)
        rid = request.request_id
        with request_context(rid):
            try:
                inbox = self.results.subscribe(rid)
            except DuplicateRequestError:
                # A retry racing its own first attempt. Joining the running stream would be nicer; for
                # now the caller learns the first attempt still runs.
                raise AlreadyExists(f"request_id: {rid!r} is already in flight") from None
            enqueue: asyncio.Task[str] | None = None
            finished = False
            try:
                await self.admission.require_workers(request.model)
                # Shielded: a caller cancelling mid-XADD must still learn the entry id, to cancel that run.
                enqueue = asyncio.ensure_future(self.admission.enqueue(request))
                entry_id = await asyncio.shield(enqueue)
                log.info("request_queued", model=request.model, entry=entry_id,
                         prompt_tokens=len(request.prompt_token_ids))
                order = EventOrder()
                while not finished:
                    message = await inbox.get()
                    if message.entry_id != entry_id:  # another run of this request id
                        continue
                    for event in order.accept(message.event):
                        finished = is_final(event)
                        if event.error_code:
                            log.info("request_failed", code=event.error_code, error=event.error_message)
                            raise GrpcException(event.error_message, status_of_error(event))
                        yield event
                        if finished:
                            log.info("request_done", finish_reason=event.finish_reason,
                                     completion_tokens=event.usage.completion_tokens)
                            break
            finally:
                self.results.unsubscribe(rid)
                if not finished and enqueue is not None:
                    # The caller cancelled, its deadline passed, or it went away: stop the run
                    # wherever it is. In a task of its own: this one may be cancelled again.
                    self._spawn(self._cancel_run(rid, enqueue))

    async def _cancel_run(self, rid: str, enqueue: asyncio.Task[str]) -> None:
        with request_context(rid):
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
        models: set[str] = set()
        for pattern in REQUESTS_STREAM_PATTERNS:  # every band: a model may have entries in one only
            models.update({model_of_requests_stream(text(k))
                           async for k in self.client.scan_iter(match=pattern, _type="stream")})
        states = [await self.admission.queue_state(m) for m in sorted(models)]
        return router_pb2.QueueStatsResponse(models=[
            router_pb2.ModelQueue(model=s.model, queued=s.queued, queued_tokens=s.queued_tokens, workers=s.workers)
            for s in states])
