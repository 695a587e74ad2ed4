"""A request's events, in seq order and each seq once: a worker that died mid-request has its entry
taken over by another, which runs it again from seq 0; the events the caller already has are dropped
(greedy output, or sampling with a seed, is identical, so the caller sees one continuous stream)."""
from __future__ import annotations

import grpc

from inferline.events import is_final
from inferline.v1 import router_pb2


class EventOrder:
    def __init__(self) -> None:
        self.next_seq = 0
        self.finished = False  # the final event (finish reason or error) was let through
        self._early: dict[int, router_pb2.RouteEvent] = {}  # arrived before a lower seq

    def accept(self, event: router_pb2.RouteEvent) -> list[router_pb2.RouteEvent]:
        """The events that can be delivered now, in order (none for a duplicate)."""
        if event.seq < self.next_seq or self.finished:
            return []
        self._early.setdefault(event.seq, event)
        ready = []
        while self.next_seq in self._early and not self.finished:
            ready.append(event := self._early.pop(self.next_seq))
            self.next_seq += 1
            self.finished = is_final(event)
        return ready


def status_of_error(event: router_pb2.RouteEvent) -> grpc.StatusCode:
    """The gRPC status an error event stands for (INTERNAL for a code name this router does not know)."""
    code = grpc.StatusCode.__members__.get(event.error_code, grpc.StatusCode.INTERNAL)
    return grpc.StatusCode.INTERNAL if code == grpc.StatusCode.OK else code

