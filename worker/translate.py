"""Engine outputs -> RouteEvents, at the worker's edge (the engine knows nothing of protobuf).
Requests' sampling parameters are translated by inferline.sampling, shared with the gateway."""
from __future__ import annotations

import grpc

from engine.outputs import FinishReason, RequestOutput, Usage
from inferline.v1 import common_pb2, router_pb2

FINISH_REASONS: dict[FinishReason, int] = {
    "length": common_pb2.FINISH_REASON_LENGTH,
    "stop": common_pb2.FINISH_REASON_STOP,
    "eos": common_pb2.FINISH_REASON_EOS,
    "abort": common_pb2.FINISH_REASON_ABORT,
}


def timings_proto(enqueued_ms: float, taken_ms: float, first_token_ms: float | None,
                  now_ms: float) -> common_pb2.Timings:
    return common_pb2.Timings(queue_ms=max(0.0, taken_ms - enqueued_ms),
                              time_to_first_token_ms=max(0.0, (first_token_ms or now_ms) - enqueued_ms),
                              total_ms=max(0.0, now_ms - enqueued_ms))


def usage_proto(usage: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)


def event_from_output(out: RequestOutput, request_id: str, seq: int,
                      timings: common_pb2.Timings | None = None) -> router_pb2.RouteEvent:
    """One engine output -> one RouteEvent. `out.request_id` is the engine's id (the worker uses the
    stream entry id there), `request_id` the client's. Usage and timings go on the last event only."""
    event = router_pb2.RouteEvent(request_id=request_id, seq=seq, token_ids=out.new_token_ids,
                                  text_delta=out.text_delta)
    for lp in out.logprobs or ():
        event.logprobs.append(common_pb2.TokenLogprob(
            token_id=lp.token_id, logprob=lp.logprob,
            top=[common_pb2.TopLogprob(token_id=t, logprob=p) for t, p in lp.top]))
    if out.finished:
        event.finish_reason = FINISH_REASONS[out.finish_reason or "abort"]
        event.usage.CopyFrom(usage_proto(out.usage))
        if timings is not None:
            event.timings.CopyFrom(timings)
    return event


def abort_event(request_id: str, seq: int, prompt_tokens: int) -> router_pb2.RouteEvent:
    """The final event of a request cancelled before it ran."""
    return router_pb2.RouteEvent(request_id=request_id, seq=seq, finish_reason=common_pb2.FINISH_REASON_ABORT,
                                 usage=common_pb2.Usage(prompt_tokens=prompt_tokens))


def error_event(request_id: str, seq: int, code: grpc.StatusCode, message: str) -> router_pb2.RouteEvent:
    """A final event that ends the request with an error: the router answers with status `code`."""
    return router_pb2.RouteEvent(request_id=request_id, seq=seq, error_code=code.name, error_message=message)

