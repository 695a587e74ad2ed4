"""Every error becomes a gRPC status in one place: this interceptor (as TGI's interceptor.py).

Servicers raise grpc-interceptor's typed exceptions (InvalidArgument, NotFound, ResourceExhausted,
...) or let engine errors through; anything else is a bug and becomes INTERNAL, logged with its
traceback, while the server keeps serving.
"""
from __future__ import annotations

from typing import Any

import grpc
import structlog
from grpc_interceptor.exceptions import GrpcException, InvalidArgument, NotFound
from grpc_interceptor.exception_to_status import AsyncExceptionToStatusInterceptor

from engine.errors import InvalidParameterError, ModelNotFoundError

log = structlog.get_logger(__name__)

# Engine errors -> the typed gRPC exception carrying the same message.
ENGINE_ERRORS: dict[type[Exception], type[GrpcException]] = {
    ModelNotFoundError: NotFound,
    InvalidParameterError: InvalidArgument,
}


def as_grpc_exception(exc: Exception) -> GrpcException | None:
    for error_type, grpc_type in ENGINE_ERRORS.items():  # most specific first (dict order)
        if isinstance(exc, error_type):
            return grpc_type(str(exc))
    return None


class ErrorInterceptor(AsyncExceptionToStatusInterceptor):
    async def handle_exception(self, ex: Exception, request_or_iterator: Any, context: grpc.aio.ServicerContext,
                               method_name: str) -> None:
        mapped = as_grpc_exception(ex)
        if mapped is not None:
            ex = mapped
        if not isinstance(ex, GrpcException):
            log.error("unhandled_error", method=method_name, exc_info=ex)
        await super().handle_exception(ex, request_or_iterator, context, method_name)
