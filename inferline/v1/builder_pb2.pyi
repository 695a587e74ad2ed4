from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BuildEngineRequest(_message.Message):
    __slots__ = ("source", "dtype", "quantization", "max_batch_size", "max_seq_len", "name")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    source: str
    dtype: str
    quantization: str
    max_batch_size: int
    max_seq_len: int
    name: str
    def __init__(self, source: _Optional[str] = ..., dtype: _Optional[str] = ..., quantization: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., max_seq_len: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("name", "fingerprint", "path", "checksum", "status", "dtype", "quantization", "max_batch_size", "max_seq_len", "architecture", "size_bytes", "created_at")
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
    def __init__(self, name: _Optional[str] = ..., fingerprint: _Optional[str] = ..., path: _Optional[str] = ..., checksum: _Optional[str] = ..., status: _Optional[str] = ..., dtype: _Optional[str] = ..., quantization: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., max_seq_len: _Optional[int] = ..., architecture: _Optional[str] = ..., size_bytes: _Optional[int] = ..., created_at: _Optional[float] = ...) -> None: ...

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
