"""inferline's inference engine: models, paged KV cache, in-flight batching, sampling.

It knows nothing of gRPC, protobuf or Redis; the worker and the builder translate at the edge.
"""
from engine.config import EngineConfig
from engine.engine import Engine
from engine.errors import InferlineError, InvalidParameterError, ModelNotFoundError, UnsupportedModelError
from engine.outputs import CompletionOutput, EngineStats, RequestOutput, TokenLogprob, Usage
from engine.sampling_params import SamplingParams

__all__ = [
    "CompletionOutput", "Engine", "EngineConfig", "EngineStats", "InferlineError", "InvalidParameterError",
    "ModelNotFoundError", "RequestOutput", "SamplingParams", "TokenLogprob", "UnsupportedModelError", "Usage",
]
