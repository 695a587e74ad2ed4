"""inferline/events.py: which event is a request's last, and folding a request's events into one."""
from inferline.events import EventFold
from inferline.v1 import common_pb2, router_pb2


def ev(seq: int, **kw) -> router_pb2.RouteEvent:
    return router_pb2.RouteEvent(request_id="r", seq=seq, **kw)


def test_a_fold_delivers_one_event_with_everything_at_the_end():
    fold = EventFold()
    assert fold.add(ev(0, token_ids=[5], text_delta="He", logprobs=[common_pb2.TokenLogprob(token_id=5)])) is None
    assert fold.add(ev(1, token_ids=[6, 7], text_delta="llo")) is None
    last = fold.add(ev(2, text_delta="!", finish_reason=common_pb2.FINISH_REASON_STOP,
                       usage=common_pb2.Usage(prompt_tokens=2, completion_tokens=3),
                       timings=common_pb2.Timings(queue_ms=1, time_to_first_token_ms=2, total_ms=9)))
    assert (last.seq, list(last.token_ids), last.text_delta) == (0, [5, 6, 7], "Hello!")
    assert [lp.token_id for lp in last.logprobs] == [5]
    assert last.finish_reason == common_pb2.FINISH_REASON_STOP
    assert (last.usage.completion_tokens, last.timings.total_ms) == (3, 9)


def test_a_fold_passes_an_error_event_as_it_is():
    fold = EventFold()
    fold.add(ev(0, token_ids=[5]))
    error = ev(1, error_code="INTERNAL", error_message="worker failed")
    assert fold.add(error) == error
