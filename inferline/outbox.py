"""Messages waiting to go out on one long-lived stream (RouteMany, both ways): items gather in the last
message until it holds max_bytes, so a write carries whatever is ready while no message grows past what
the peer will take (a message over its receive limit would fail the whole call)."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


class Outbox(Generic[M]):
    def __init__(self, new_message: Callable[[], M], max_bytes: int):
        self._new_message = new_message
        self._max_bytes = max_bytes
        self._messages: list[M] = [new_message()]
        self._bytes = 0  # of the repeated items in the last message

    @property
    def last(self) -> M:
        """The message being filled: set its small fields (a cancel, a flag) here."""
        return self._messages[-1]

    def add(self, field: str, item: Message) -> None:
        """Appends `item` to the repeated `field`, in the last message unless that would pass max_bytes."""
        size = item.ByteSize()
        if self._bytes and self._bytes + size > self._max_bytes:
            self._messages.append(self._new_message())
            self._bytes = 0
        getattr(self._messages[-1], field).append(item)
        self._bytes += size

    def take(self) -> M | None:
        """The oldest message if anything is in it (what comes after goes in the next), else None."""
        first = self._messages[0]
        if not first.ListFields():
            return None
        del self._messages[0]
        if not self._messages:
            self._messages.append(self._new_message())
            self._bytes = 0
        return first
