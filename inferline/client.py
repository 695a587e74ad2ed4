"""A small Python client for the gateway: sync and async, streaming iterators, typed errors.

Retries are gRPC's own (a service-config retry policy), for UNAVAILABLE only: a request that reached
the server and failed for another reason is not repeated behind the caller's back.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator

import grpc

from inferline.v1 import common_pb2, generate_pb2, generate_pb2_grpc

_RETRY_SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{"service": "inferline.v1.InferenceService"}],
        "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.2s", "maxBackoff": "2s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"]},
    }]
})
_CHANNEL_OPTIONS = [("grpc.service_config", _RETRY_SERVICE_CONFIG), ("grpc.enable_retries", 1)]


class InferlineError(Exception):
    """A call failed; `code` is the gRPC status code, the message is the server's."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidRequest(InferlineError): ...
class ModelNotFound(InferlineError): ...
class Overloaded(InferlineError): ...
class DeadlineExceeded(InferlineError): ...
class Unauthenticated(InferlineError): ...
class Unavailable(InferlineError): ...


ERRORS_BY_CODE: dict[grpc.StatusCode, type[InferlineError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


def _typed(err: grpc.RpcError) -> InferlineError:
    code = err.code()
    return ERRORS_BY_CODE.get(code, InferlineError)(code, err.details() or "")


@dataclass
class Request:
    """What to generate; sampling fields left None take the server's defaults."""

    model: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    max_tokens: int = 128
    min_tokens: int = 0
    ignore_eos: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    request_id: str = ""

    def to_proto(self) -> generate_pb2.GenerateRequest:
        params = common_pb2.SamplingParameters(max_tokens=self.max_tokens, min_tokens=self.min_tokens,
                                               ignore_eos=self.ignore_eos, stop=self.stop)
        for name in ("temperature", "top_p", "top_k", "seed"):
            if getattr(self, name) is not None:
                setattr(params, name, getattr(self, name))
        req = generate_pb2.GenerateRequest(model=self.model, parameters=params, request_id=self.request_id)
        if self.messages is not None:
            req.messages.messages.extend(common_pb2.ChatMessage(**m) for m in self.messages)
        else:
            req.prompt = self.prompt or ""
        return req


def _metadata(api_key: str | None) -> list[tuple[str, str]] | None:
    return [("authorization", f"Bearer {api_key}")] if api_key else None


class Client:
    def __init__(self, address: str = "127.0.0.1:50051", api_key: str | None = None):
        self._channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
        self._stub = generate_pb2_grpc.InferenceServiceStub(self._channel)
        self._metadata = _metadata(api_key)

    def generate(self, request: Request, timeout: float | None = None) -> generate_pb2.GenerateResponse:
        try:
            return self._stub.Generate(request.to_proto(), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise _typed(err) from None

    def generate_stream(self, request: Request, timeout: float | None = None) -> Iterator[generate_pb2.GenerateStreamResponse]:
        call = self._stub.GenerateStream(request.to_proto(), timeout=timeout, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as err:
            raise _typed(err) from None
        finally:
            call.cancel()  # a consumer that stops early cancels the request server-side

    def list_models(self, timeout: float | None = 10.0) -> list[generate_pb2.ModelInfo]:
        try:
            return list(self._stub.ListModels(generate_pb2.ListModelsRequest(), timeout=timeout,
                                              metadata=self._metadata).models)
        except grpc.RpcError as err:
            raise _typed(err) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    def __init__(self, address: str = "127.0.0.1:50051", api_key: str | None = None):
        self._channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        self._stub = generate_pb2_grpc.InferenceServiceStub(self._channel)
        self._metadata = _metadata(api_key)

    async def generate(self, request: Request, timeout: float | None = None) -> generate_pb2.GenerateResponse:
        try:
            return await self._stub.Generate(request.to_proto(), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise _typed(err) from None

    async def generate_stream(self, request: Request,
                              timeout: float | None = None) -> AsyncIterator[generate_pb2.GenerateStreamResponse]:
        call = self._stub.GenerateStream(request.to_proto(), timeout=timeout, metadata=self._metadata)
        try:
            async for chunk in call:
                yield chunk
        except grpc.RpcError as err:
            raise _typed(err) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
