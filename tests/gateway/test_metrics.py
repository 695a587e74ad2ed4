"""gateway/metrics.py RequestTimer: what a streamed request and a folded (unary) one record."""
from prometheus_client import REGISTRY

from gateway.metrics import RequestTimer
from inferline.v1 import common_pb2, router_pb2


def samples(name: str, model: str) -> tuple[float, float]:
    """(count, sum) of a histogram's series for `model`."""
    return (REGISTRY.get_sample_value(f"{name}_count", {"model": model}) or 0.0,
            REGISTRY.get_sample_value(f"{name}_sum", {"model": model}) or 0.0)


def test_a_streamed_request_records_its_first_token_and_each_gap():
    timer = RequestTimer()
    timer.model = "streamed"
    for event in (router_pb2.RouteEvent(token_ids=[1]), router_pb2.RouteEvent(token_ids=[2]),
                  router_pb2.RouteEvent(token_ids=[3], finish_reason=common_pb2.FINISH_REASON_LENGTH)):
        timer.event(event)
    assert samples("inferline_time_to_first_token_seconds", "streamed")[0] == 1
    assert samples("inferline_inter_token_latency_seconds", "streamed")[0] == 2
    assert samples("inferline_e2e_request_latency_seconds", "streamed")[0] == 1


def test_a_folded_request_takes_its_first_token_time_from_the_worker_timings():
    timer = RequestTimer(folded=True)
    timer.model = "folded"
    timer.started -= 5.0  # the call came 5 s ago; the worker's first token came 3 s before its last event
    timer.event(router_pb2.RouteEvent(token_ids=[1, 2, 3], finish_reason=common_pb2.FINISH_REASON_LENGTH,
                                      timings=common_pb2.Timings(time_to_first_token_ms=1000, total_ms=4000)))
    count, total = samples("inferline_time_to_first_token_seconds", "folded")
    assert count == 1 and 2.0 <= total < 2.5
    assert samples("inferline_inter_token_latency_seconds", "folded")[0] == 0  # no gaps seen: none recorded
    assert samples("inferline_e2e_request_latency_seconds", "folded")[0] == 1
