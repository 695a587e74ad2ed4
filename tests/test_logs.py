"""inferline/logs.py's LineWriter: every line reaches stderr, in order, those of an event loop's thread
written together once per loop iteration."""
from __future__ import annotations

import asyncio
import io
import threading

import pytest

from inferline.logs import LineWriter


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def stderr() -> CountingStream:
    return CountingStream()


def test_without_a_loop_each_line_is_written_at_once(stderr):
    lines = LineWriter(lambda: stderr)
    lines.info("one")
    assert stderr.getvalue() == "one\n"
    lines.error("two")
    assert stderr.getvalue() == "one\ntwo\n" and stderr.writes == 2


def test_lines_of_one_loop_iteration_are_written_together_after_it(stderr):
    lines = LineWriter(lambda: stderr)

    async def scenario() -> str:
        for i in range(3):
            lines.info(f"line {i}")
        seen = stderr.getvalue()  # nothing yet: the write comes after this iteration
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return seen

    assert asyncio.run(scenario()) == ""
    assert stderr.getvalue() == "line 0\nline 1\nline 2\n" and stderr.writes == 1


def test_a_line_from_another_thread_goes_after_those_still_waiting(stderr):
    lines = LineWriter(lambda: stderr)

    async def scenario() -> None:
        lines.info("loop 1")
        thread = threading.Thread(target=lines.info, args=("thread",))
        thread.start()
        thread.join()
        lines.info("loop 2")
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert stderr.getvalue() == "loop 1\nthread\nloop 2\n"


def test_lines_left_by_a_loop_that_ended_go_out_with_the_next_loops(stderr):
    lines = LineWriter(lambda: stderr)

    loop = asyncio.new_event_loop()

    def log_and_stop() -> None:
        lines.info("last words")
        loop.stop()  # the loop ends before its next iteration could write the line

    loop.call_soon(log_and_stop)
    loop.run_forever()
    loop.close()
    assert stderr.getvalue() == ""

    async def next_loop() -> None:
        lines.info("next")
        await asyncio.sleep(0)

    asyncio.run(next_loop())
    assert stderr.getvalue() == "last words\nnext\n"
    lines.flush()  # what exit does (atexit): nothing is left
    assert stderr.getvalue() == "last words\nnext\n"
