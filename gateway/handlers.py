"""Registers InferenceService with request deserializers that never raise.

With the generated add_InferenceServiceServicer_to_server, bytes that do not parse as the request
message make grpc answer UNKNOWN "Unexpected <class 'DecodeError'>..." before any interceptor or
handler runs. Here a parse failure yields a MalformedRequest, which the servicer turns into
INVALID_ARGUMENT naming the expected message type.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_interceptor.exceptions import InvalidArgument

from inferline.v1 import generate_pb2, generate_pb2_grpc

SERVICE_NAME = "inferline.v1.InferenceService"
M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class MalformedRequest:
    message_type: str
    error: str


def _lenient(message_type: type[M]) -> Callable[[bytes], M | MalformedRequest]:
    def deserialize(data: bytes) -> M | MalformedRequest:
        try:
            return message_type.FromString(data)
        except DecodeError as e:
            return MalformedRequest(message_type.DESCRIPTOR.full_name, str(e))
    return deserialize


def parsed(request: M | MalformedRequest) -> M:
    """The request, or INVALID_ARGUMENT when its bytes were not a valid message."""
    if isinstance(request, MalformedRequest):
        raise InvalidArgument(f"request: not a valid {request.message_type} message: {request.error}")
    return request


def add_inference_service(servicer: generate_pb2_grpc.InferenceServiceServicer, server: grpc.aio.Server) -> None:
    """Same shape as the generated add_InferenceServiceServicer_to_server, lenient deserializers."""
    handlers = {
        "Generate": grpc.unary_unary_rpc_method_handler(
            servicer.Generate,
            request_deserializer=_lenient(generate_pb2.GenerateRequest),
            response_serializer=generate_pb2.GenerateResponse.SerializeToString),
        "GenerateStream": grpc.unary_stream_rpc_method_handler(
            servicer.GenerateStream,
            request_deserializer=_lenient(generate_pb2.GenerateRequest),
            response_serializer=generate_pb2.GenerateStreamResponse.SerializeToString),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels,
            request_deserializer=_lenient(generate_pb2.ListModelsRequest),
            response_serializer=generate_pb2.ListModelsResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
