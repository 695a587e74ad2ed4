from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BuildEngineRequest(_message.Message):
    __slots__ = ("source", "dtype", "quantization", "max_batch_size", "max_seq_len", "name", "quantization_options")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    source: str
    dtype: str
    quantization: str
    max_batch_size: int
    max_seq_len: int
    name: str
    quantization_options: QuantizationOptions
    def __init__(self, source: _Optional[str] = ..., dtype: _Optional[str] = ..., quantization: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., max_seq_len: _Optional[int] = ..., name: _Optional[str] = ..., quantization_options: _Optional[_Union[QuantizationOptions, _Mapping]] = ...) -> None: ...

class QuantizationOptions(_message.Message):
    __slots__ = ("group_size", "quantize_lm_head", "smoothquant_alpha", "gptq_act_order", "fp8_granularity", "quantize_embedding", "fp8_activations")
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_LM_HEAD_FIELD_NUMBER: _ClassVar[int]
    SMOOTHQUANT_ALPHA_FIELD_NUMBER: _ClassVar[int]
    GPTQ_ACT_ORDER_FIELD_NUMBER: _ClassVar[int]
    FP8_GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    FP8_ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    group_size: int
    quantize_lm_head: bool
    smoothquant_alpha: float
    gptq_act_order: bool
    fp8_granularity: str
    quantize_embedding: bool
    fp8_activations: str
    def __init__(self, group_size: _Optional[int] = ..., quantize_lm_head: _Optional[bool] = ..., smoothquant_alpha: _Optional[float] = ..., gptq_act_order: _Optional[bool] = ..., fp8_granularity: _Optional[str] = ..., quantize_embedding: _Optional[bool] = ..., fp8_activations: _Optional[str] = ...) -> None: ...

class QualityReport(_message.Message):
    __slots__ = ("perplexity", "reference_perplexity", "perplexity_change", "greedy_agreement", "eval_tokens", "weight_bytes", "reference_weight_bytes", "peak_build_memory_bytes", "calibration_fingerprint", "quantize_seconds")
    PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_CHANGE_FIELD_NUMBER: _ClassVar[int]
    GREEDY_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    EVAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_BUILD_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    perplexity: float
    reference_perplexity: float
    perplexity_change: float
    greedy_agreement: float
    eval_tokens: int
    weight_bytes: int
    reference_weight_bytes: int
    peak_build_memory_bytes: int
    calibration_fingerprint: str
    quantize_seconds: float
    def __init__(self, perplexity: _Optional[float] = ..., reference_perplexity: _Optional[float] = ..., perplexity_change: _Optional[float] = ..., greedy_agreement: _Optional[float] = ..., eval_tokens: _Optional[int] = ..., weight_bytes: _Optional[int] = ..., reference_weight_bytes: _Optional[int] = ..., peak_build_memory_bytes: _Optional[int] = ..., calibration_fingerprint: _Optional[str] = ..., quantize_seconds: _Optional[float] = ...) -> None: ...

class BuildEvent(_message.Message):
    __slots__ = ("stage", "fraction", "message", "engine")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    fraction: float
    message: str
    engine: EngineRecord
    def __init__(self, stage: _Optional[str] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ..., engine: _Optional[_Union[EngineRecord, _Mapping]] = ...) -> None: ...

class EngineRecord(_message.Message):
    __slots__ = ("name", "fingerprint", "path", "checksum", "status", "dtype", "quantization", "max_batch_size", "max_seq_len", "architecture", "size_bytes", "created_at", "quantization_options", "quality")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    fingerprint: str
    path: str
    checksum: str
    status: str
    dtype: str
    quantization: str
    max_batch_size: int
    max_seq_len: int
    architecture: str
    size_bytes: int
    created_at: float
    quantization_options: QuantizationOptions
    quality: QualityReport
    def __init__(self, name: _Optional[str] = ..., fingerprint: _Optional[str] = ..., path: _Optional[str] = ..., checksum: _Optional[str] = ..., status: _Optional[str] = ..., dtype: _Optional[str] = ..., quantization: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., max_seq_len: _Optional[int] = ..., architecture: _Optional[str] = ..., size_bytes: _Optional[int] = ..., created_at: _Optional[float] = ..., quantization_options: _Optional[_Union[QuantizationOptions, _Mapping]] = ..., quality: _Optional[_Union[QualityReport, _Mapping]] = ...) -> None: ...

class GetEngineRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListEnginesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListEnginesResponse(_message.Message):
    __slots__ = ("engines",)
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    engines: _containers.RepeatedCompositeFieldContainer[EngineRecord]
    def __init__(self, engines: _Optional[_Iterable[_Union[EngineRecord, _Mapping]]] = ...) -> None: ...

class DeleteEngineRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteEngineResponse(_message.Message):
    __slots__ = ("engine",)
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    engine: EngineRecord
    def __init__(self, engine: _Optional[_Union[EngineRecord, _Mapping]] = ...) -> None: ...
