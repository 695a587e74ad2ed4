"""Service logging: structlog, JSON lines on stderr, the request id bound on every line about a request.

The request id travels in a ContextVar (`REQUEST_ID`), so handlers and everything they call log it
without passing it along; `request_context(rid)` sets it for a block.

Lines logged on an event loop's thread are written together once per loop iteration, not with a write
of their own each: services log a few lines per request, and at a thousand requests a second the
syscalls were a measurable share of their CPU. Lines from other threads, or with no loop running, are
written at once (after any still waiting, so the order holds).
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import sys
import threading
from contextvars import ContextVar
from typing import Callable, Iterator, TextIO

import structlog

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


def _add_request_id(_logger, _name, event: dict) -> dict:
    rid = REQUEST_ID.get()
    if rid is not None:
        event.setdefault("request_id", rid)
    return event


class LineWriter:
    """structlog's logger: writes rendered lines to `stream()` (sys.stderr, looked up per write: a test
    harness may swap it), those of an event loop's thread once per loop iteration."""

    def __init__(self, stream: Callable[[], TextIO] = lambda: sys.stderr) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._lock = threading.Lock()  # lines come from the loop's thread and from worker threads
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on
        self._flush_thread: int | None = None  # and that loop's thread
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        with self._lock:
            self._lines.append(message)
            if self._flush_thread == threading.get_ident() and self._flush_on.is_running():
                return  # this thread's loop writes it after this iteration (the common case: cheap)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is None:
                self._write()
            elif self._flush_on is not loop:  # (another loop's flush may never come: that loop ended)
                self._flush_on, self._flush_thread = loop, threading.get_ident()
                loop.call_soon(self.flush)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg

    def flush(self) -> None:
        with self._lock:
            self._flush_on = self._flush_thread = None
            self._write()

    def _write(self) -> None:
        if self._lines:
            text = "\n".join(self._lines) + "\n"
            self._lines.clear()
            stream = self._stream()
            stream.write(text)
            stream.flush()


LINES = LineWriter()


def configure_service_logging(service: str, level: str = "info", json: bool = True) -> None:
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_request_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=lambda *_: LINES,
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(service=service)


@contextlib.contextmanager
def request_context(request_id: str) -> Iterator[None]:
    token = REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        # ValueError: exited in another context than the one it was entered in. That is an async generator
        # (a streaming handler that grpc stopped while it waited at a yield) closed by the event loop in a
        # task of its own, whose context ends with it: nothing to restore.
        with contextlib.suppress(ValueError):
            REQUEST_ID.reset(token)
