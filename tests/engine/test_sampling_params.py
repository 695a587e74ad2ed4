import math

import pytest

from engine import InvalidParameterError, SamplingParams


@pytest.mark.parametrize("kwargs, field", [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"min_p": 2.0}, "min_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_tokens": 4, "min_tokens": 5}, "min_tokens"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"presence_penalty": 3.0}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"seed": -1}, "seed"),
    ({"stop": [""]}, "stop"),
    ({"stop": ["x"] * 17}, "stop"),
    ({"stop_token_ids": [-3]}, "stop_token_ids"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"max_tokens": True}, "max_tokens"),
    ({"stop": ["\n"], "detokenize": False}, "stop"),  # stop strings are matched in the text
])
def test_each_invalid_parameter_names_its_field(kwargs, field):
    with pytest.raises(InvalidParameterError) as e:
        SamplingParams(**kwargs)
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}:")


def test_valid_parameters_are_kept_and_lists_frozen():
    p = SamplingParams(max_tokens=5, temperature=0.7, top_p=0.9, stop=["a", "b"], stop_token_ids=[3])
    assert p.stop == ("a", "b") and p.stop_token_ids == (3,) and not p.greedy
    assert SamplingParams(temperature=1.0, top_k=1).greedy
