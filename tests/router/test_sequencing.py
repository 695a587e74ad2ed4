"""router/sequencing.py: in seq order, each seq once."""
import grpc

from inferline.v1 import common_pb2, router_pb2
from inferline.events import is_final
from router.sequencing import EventOrder, status_of_error


def ev(seq: int, **kw) -> router_pb2.RouteEvent:
    return router_pb2.RouteEvent(request_id="r", seq=seq, **kw)


def delivered(order: EventOrder, *seqs: int) -> list[int]:
    return [e.seq for s in seqs for e in order.accept(ev(s))]


def test_in_order_events_pass_through():
    assert delivered(EventOrder(), 0, 1, 2) == [0, 1, 2]


def test_a_rerun_from_zero_only_adds_what_is_new():
    # worker A delivered 0..2 then died; worker B runs the request again from 0
    assert delivered(EventOrder(), 0, 1, 2, 0, 1, 2, 3, 4) == [0, 1, 2, 3, 4]


def test_interleaved_runs_deliver_each_seq_once():
    assert delivered(EventOrder(), 0, 0, 1, 1, 2, 3, 2, 3) == [0, 1, 2, 3]


def test_early_events_wait_for_the_gap():
    assert delivered(EventOrder(), 1, 2, 0, 3) == [0, 1, 2, 3]


def test_final_and_error_events():
    assert not is_final(ev(0))
    assert is_final(ev(3, finish_reason=common_pb2.FINISH_REASON_LENGTH))
    assert is_final(ev(0, error_code="INVALID_ARGUMENT"))
    assert status_of_error(ev(0, error_code="RESOURCE_EXHAUSTED")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_of_error(ev(0, error_code="NO_SUCH_CODE")) == grpc.StatusCode.INTERNAL
    assert status_of_error(ev(0, error_code="OK")) == grpc.StatusCode.INTERNAL

