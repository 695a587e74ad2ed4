"""Protobuf SamplingParameters <-> the engine's SamplingParams, for the gateway (validation) and the
worker (execution), so both accept exactly the same values with the same messages.

Unset optional proto fields take the engine's defaults; SamplingParams raises InvalidParameterError
naming the field for a bad value.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from engine.sampling_params import SamplingParams
from inferline.v1 import common_pb2

# Optional (presence-tracked) fields: unset -> the engine's default.
OPTIONAL_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                   "frequency_penalty", "seed")
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
# Plain proto3 scalars and lists: always carried.
PLAIN_FIELDS = ("max_tokens", "min_tokens", "ignore_eos", "logprobs", "top_logprobs")
LIST_FIELDS = ("stop", "stop_token_ids")

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SamplingParams)}


def _float32(value: float) -> float:
    # Proto floats are float32: 1.1 arrives as 1.100000023841858. Its shortest decimal form keeps
    # error messages readable and compares to the bounds (0, 1, +-2) exactly as the float32 does.
    return float(str(np.float32(value)))


def sampling_params_from_proto(proto: common_pb2.SamplingParameters) -> SamplingParams:
    """Raises engine.errors.InvalidParameterError for a bad value."""
    kwargs: dict[str, object] = {name: getattr(proto, name) for name in OPTIONAL_FIELDS if proto.HasField(name)}
    kwargs |= {name: _float32(kwargs[name]) for name in _FLOAT_FIELDS if name in kwargs}
    kwargs |= {name: getattr(proto, name) for name in PLAIN_FIELDS}
    kwargs |= {name: tuple(getattr(proto, name)) for name in LIST_FIELDS}
    return SamplingParams(**kwargs)


def sampling_params_to_proto(params: SamplingParams) -> common_pb2.SamplingParameters:
    """The inverse, for clients and tests: optional fields are set only where they differ from the
    engine's defaults, so from_proto(to_proto(p)) == p (for float32-representable values)."""
    proto = common_pb2.SamplingParameters(**{name: getattr(params, name) for name in PLAIN_FIELDS},
                                          stop=params.stop, stop_token_ids=params.stop_token_ids)
    for name in OPTIONAL_FIELDS:
        value = getattr(params, name)
        if value is not None and value != _DEFAULTS[name]:
            setattr(proto, name, value)
    return proto
