"""worker/translate.py: protobuf <-> engine objects."""
import grpc
import pytest

from engine import InvalidParameterError, RequestOutput, SamplingParams, TokenLogprob, Usage
from inferline.v1 import common_pb2
from inferline.sampling import sampling_params_from_proto, sampling_params_to_proto
from worker.translate import abort_event, error_event, event_from_output, timings_proto


def test_unset_fields_take_the_engine_defaults():
    params = sampling_params_from_proto(common_pb2.SamplingParameters(max_tokens=7))
    assert params == SamplingParams(max_tokens=7)


def test_engine_params_round_trip_through_the_proto():
    # float32-representable values: the proto carries floats as float32
    params = SamplingParams(max_tokens=12, min_tokens=2, temperature=0.5, top_k=40, top_p=0.75, min_p=0.125,
                            repetition_penalty=1.25, presence_penalty=-0.5, frequency_penalty=1.5, seed=2**62 + 1,
                            stop=("\n\n", "END"), stop_token_ids=(2, 7), ignore_eos=True, logprobs=True, top_logprobs=3)
    proto = sampling_params_to_proto(params)
    assert sampling_params_from_proto(proto) == params
    assert sampling_params_to_proto(sampling_params_from_proto(proto)) == proto


def test_proto_round_trip_keeps_unset_fields_unset():
    proto = common_pb2.SamplingParameters(max_tokens=3, top_p=0.5, stop=["x"])
    again = sampling_params_to_proto(sampling_params_from_proto(proto))
    assert again == proto
    assert not again.HasField("temperature") and not again.HasField("seed")


@pytest.mark.parametrize("proto, field", [
    (common_pb2.SamplingParameters(max_tokens=0), "max_tokens"),
    (common_pb2.SamplingParameters(max_tokens=4, temperature=-1), "temperature"),
    (common_pb2.SamplingParameters(max_tokens=4, top_p=0), "top_p"),
    (common_pb2.SamplingParameters(max_tokens=4, seed=2**63), "seed"),
])
def test_bad_values_are_refused_naming_the_field(proto, field):
    with pytest.raises(InvalidParameterError) as err:
        sampling_params_from_proto(proto)
    assert err.value.field == field and str(err.value).startswith(field)


def test_outputs_become_events_with_usage_and_timings_only_on_the_last():
    usage = Usage(prompt_tokens=5, completion_tokens=2)
    first = RequestOutput("entry-1", [11], "a", [TokenLogprob(11, -0.5, ((11, -0.5), (12, -1.0)))], False, None, usage)
    last = RequestOutput("entry-1", [13], "b", None, True, "eos", usage)
    event = event_from_output(first, "rid-1", 0)
    assert (event.request_id, event.seq, list(event.token_ids), event.text_delta) == ("rid-1", 0, [11], "a")
    assert event.logprobs[0].token_id == 11 and event.logprobs[0].logprob == -0.5
    assert [(t.token_id, t.logprob) for t in event.logprobs[0].top] == [(11, -0.5), (12, -1.0)]
    assert event.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED
    assert not event.HasField("usage") and not event.HasField("timings")
    final = event_from_output(last, "rid-1", 1, timings_proto(1000, 1010, 1050, 1100))
    assert final.finish_reason == common_pb2.FINISH_REASON_EOS and final.usage.completion_tokens == 2
    assert (final.timings.queue_ms, final.timings.time_to_first_token_ms, final.timings.total_ms) == (10, 50, 100)


def test_abort_and_error_events_are_final():
    assert abort_event("r", 0, 9).finish_reason == common_pb2.FINISH_REASON_ABORT
    err = error_event("r", 0, grpc.StatusCode.INVALID_ARGUMENT, "temperature: must be >= 0")
    assert (err.error_code, err.error_message) == ("INVALID_ARGUMENT", "temperature: must be >= 0")
    assert err.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED and not err.token_ids
