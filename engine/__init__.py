"""inferline's inference engine: models, paged KV cache, in-flight batching, sampling.

It knows nothing of gRPC, protobuf or Redis; the worker and the builder translate at the edge.
Names are imported lazily (PEP 562), so `engine.errors` or `engine.sampling_params` can be used by
services that never run a model (router, gateway) without loading torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Engine": "engine.engine",
    "EngineConfig": "engine.config",
    "InferlineError": "engine.errors",
    "InvalidParameterError": "engine.errors",
    "ModelNotFoundError": "engine.errors",
    "UnsupportedModelError": "engine.errors",
    "CompletionOutput": "engine.outputs",
    "EngineStats": "engine.outputs",
    "RequestOutput": "engine.outputs",
    "TokenLogprob": "engine.outputs",
    "Usage": "engine.outputs",
    "SamplingParams": "engine.sampling_params",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


if TYPE_CHECKING:
    from engine.config import EngineConfig
    from engine.engine import Engine
    from engine.errors import InferlineError, InvalidParameterError, ModelNotFoundError, UnsupportedModelError
    from engine.outputs import CompletionOutput, EngineStats, RequestOutput, TokenLogprob, Usage
    from engine.sampling_params import SamplingParams
