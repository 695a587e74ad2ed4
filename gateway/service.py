"""The public InferenceService: validate and tokenize, then relay the router's answer, routed over the
gateway's RouteMany calls (gateway/router_mux.py): one folded event for the unary Generate
(RouteRequest.final_only), every event for GenerateStream.

Errors are raised as grpc-interceptor exceptions; the shared ErrorInterceptor turns them into
statuses. A router status is passed on with its code and message (RESOURCE_EXHAUSTED when a queue
is full, NOT_FOUND, DEADLINE_EXCEEDED, ...), except UNAVAILABLE, whose transport details (internal
addresses) are logged rather than shown to clients.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, Iterator

import grpc
import structlog
from grpc_interceptor.exceptions import GrpcException, Unavailable

from gateway import metrics
from gateway.auth import api_key_of, scoped_request_id
from gateway.handlers import MalformedRequest, parsed
from gateway.models import ModelCatalog
from gateway.relay import INCOMPLETE, ResponseBuilder, stream_chunk
from gateway.router_mux import RouterError, RouterMux
from gateway.tokenizers import EngineTokenizers
from gateway.validation import Limits, request_id_of, to_route_request
from inferline.logs import request_context
from inferline.v1 import common_pb2, generate_pb2, generate_pb2_grpc, router_pb2

log = structlog.get_logger(__name__)
REQUEST_ID_HEADER = "x-request-id"
GenerateRequestIn = generate_pb2.GenerateRequest | MalformedRequest


class InferenceServicer(generate_pb2_grpc.InferenceServiceServicer):
    def __init__(self, tokenizers: EngineTokenizers, catalog: ModelCatalog, router: RouterMux, limits: Limits):
        self.tokenizers = tokenizers
        self.catalog = catalog
        self.router = router
        self.limits = limits

    async def Generate(self, request: GenerateRequestIn, context: grpc.aio.ServicerContext
                       ) -> generate_pb2.GenerateResponse:
        with metrics.observed(context, folded=True) as timer:
            req = parsed(request)
            rid = request_id_of(req)
            # Unary: the id goes back in the response and the trailing metadata (an error status
            # included); sending initial metadata on its own would cost a batch of its own.
            context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
            with request_context(rid), _outcome("generate", req.model) as done:
                route_req = await self._route_request(req, rid, context)
                route_req.final_only = True  # it reads nothing before the end: one folded event
                builder = ResponseBuilder(rid)
                async with contextlib.aclosing(self._route(route_req, context, timer)) as events:
                    async for event in events:
                        builder.add(event)
                response = builder.build()
                done.update(prompt_tokens=response.usage.prompt_tokens,
                            completion_tokens=response.usage.completion_tokens, finish_reason=response.finish_reason)
                return response

    async def GenerateStream(self, request: GenerateRequestIn, context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[generate_pb2.GenerateStreamResponse]:
        with metrics.observed(context) as timer:
            req = parsed(request)
            rid = request_id_of(req)
            await _announce(context, rid)
            with request_context(rid), _outcome("generate_stream", req.model):
                route_req = await self._route_request(req, rid, context)
                finished = False
                async with contextlib.aclosing(self._route(route_req, context, timer)) as events:
                    async for event in events:
                        finished = finished or event.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED
                        yield stream_chunk(event, rid)
                if not finished:
                    raise Unavailable(INCOMPLETE)

    async def ListModels(self, request: generate_pb2.ListModelsRequest | MalformedRequest,
                         context: grpc.aio.ServicerContext) -> generate_pb2.ListModelsResponse:
        parsed(request)
        return await self.catalog.list_models()

    async def _route_request(self, req: generate_pb2.GenerateRequest, rid: str,
                             context: grpc.aio.ServicerContext) -> router_pb2.RouteRequest:
        route_req = await to_route_request(req, rid, self.tokenizers, self.limits)
        if req.request_id:  # the client's own id: its idempotency key (per API key)
            route_req.idempotent = True
            route_req.request_id = scoped_request_id(rid, api_key_of(context.invocation_metadata() or ()))
        return route_req

    async def _route(self, route_req: router_pb2.RouteRequest, context: grpc.aio.ServicerContext,
                     timer: metrics.RequestTimer) -> AsyncIterator[router_pb2.RouteEvent]:
        # The router gets what is left of the client's deadline, so it stops the request (and frees
        # its worker slot) when the client would no longer read the answer anyway. Closing the
        # events early (the client cancelled: our task is cancelled) cancels the request there.
        timer.model = route_req.model  # validated: a model of the store
        try:
            async with contextlib.aclosing(self.router.route(route_req, context.time_remaining())) as events:
                async for event in events:
                    timer.event(event)
                    yield event
        except RouterError as e:
            raise _router_error(e) from None


def _router_error(e: RouterError) -> GrpcException:
    if e.code == grpc.StatusCode.UNAVAILABLE:
        log.warning("router_unavailable", details=e.details)
        return Unavailable("router: unavailable, retry later")
    return GrpcException(e.details or e.code.name, status_code=e.code)


async def _announce(context: grpc.aio.ServicerContext, rid: str) -> None:
    # Streaming: initial metadata reaches the client before the first chunk; trailing metadata also
    # comes with an error status, so a rejected request can still be found in the logs by its id.
    metadata = ((REQUEST_ID_HEADER, rid),)
    await context.send_initial_metadata(metadata)
    context.set_trailing_metadata(metadata)


@contextlib.contextmanager
def _outcome(method: str, model: str) -> Iterator[dict[str, object]]:
    """One log line per request: done (with the fields the caller adds), failed (with the status it
    gets) or cancelled."""
    fields: dict[str, object] = {}
    start = time.perf_counter()
    try:
        yield fields
    except GrpcException as e:
        log.info(f"{method}_failed", model=model, ms=_ms(start), code=e.status_code.name, details=e.details)
        raise
    except (asyncio.CancelledError, GeneratorExit):  # the client went away
        log.info(f"{method}_cancelled", model=model, ms=_ms(start))
        raise
    log.info(f"{method}_done", model=model, ms=_ms(start), **fields)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)
