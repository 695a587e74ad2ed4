"""RouteEvents, as the worker publishes them and the router relays them: when an event is a request's
last, and folding a request's events into one (RouteRequest.final_only)."""
from __future__ import annotations

from inferline.v1 import common_pb2, router_pb2


def is_final(event: router_pb2.RouteEvent) -> bool:
    return bool(event.error_code) or event.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED


class EventFold:
    """RouteRequest.final_only: a request's events, in seq order, folded into one (seq 0) that comes
    with its last: the worker publishes only that one, and the router relays only that one."""

    def __init__(self) -> None:
        self._folded = router_pb2.RouteEvent()
        self._text: list[str] = []

    def add(self, event: router_pb2.RouteEvent) -> router_pb2.RouteEvent | None:
        """The folded event once `event` is the last (an error event as it is), else None."""
        if event.error_code:
            return event
        self._text.append(event.text_delta)
        self._folded.token_ids.extend(event.token_ids)
        self._folded.logprobs.extend(event.logprobs)
        if not is_final(event):
            return None
        folded = self._folded
        folded.request_id, folded.seq, folded.finish_reason = event.request_id, 0, event.finish_reason
        folded.text_delta = "".join(self._text)
        if event.HasField("usage"):
            folded.usage.CopyFrom(event.usage)
        if event.HasField("timings"):
            folded.timings.CopyFrom(event.timings)
        return folded
