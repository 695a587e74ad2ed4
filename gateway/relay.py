"""The router's RouteEvents, relayed: one GenerateStreamResponse chunk per event (GenerateStream), or
all of them folded into one GenerateResponse (Generate). Pure functions of the messages."""
from __future__ import annotations

from grpc_interceptor.exceptions import Unavailable

from inferline.v1 import common_pb2, generate_pb2, router_pb2

# The router ends a stream only after the final event; anything else is a lost connection or a router
# bug. UNAVAILABLE: retrying with the same request_id is safe.
INCOMPLETE = "router: the event stream ended before the request finished"


def stream_chunk(event: router_pb2.RouteEvent, request_id: str) -> generate_pb2.GenerateStreamResponse:
    chunk = generate_pb2.GenerateStreamResponse(request_id=request_id, text_delta=event.text_delta,
                                                token_ids=event.token_ids, logprobs=event.logprobs,
                                                finish_reason=event.finish_reason)
    # Copied only when present, so non-final chunks leave usage/timings unset as the contract says.
    if event.HasField("usage"):
        chunk.usage.CopyFrom(event.usage)
    if event.HasField("timings"):
        chunk.timings.CopyFrom(event.timings)
    return chunk


class ResponseBuilder:
    """Folds a request's events into its GenerateResponse."""

    def __init__(self, request_id: str):
        self._response = generate_pb2.GenerateResponse(request_id=request_id)
        self._text: list[str] = []

    @property
    def finished(self) -> bool:
        return self._response.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED

    def add(self, event: router_pb2.RouteEvent) -> None:
        self._text.append(event.text_delta)
        self._response.token_ids.extend(event.token_ids)
        self._response.logprobs.extend(event.logprobs)
        if event.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED:
            self._response.finish_reason = event.finish_reason
        if event.HasField("usage"):
            self._response.usage.CopyFrom(event.usage)
        if event.HasField("timings"):
            self._response.timings.CopyFrom(event.timings)

    def build(self) -> generate_pb2.GenerateResponse:
        if not self.finished:
            raise Unavailable(INCOMPLETE)
        self._response.text = "".join(self._text)
        return self._response
