from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("protocol_version", "owner_name", "class_names", "row_count", "input_shape", "feature_names", "methods", "class_counts", "trainer_id", "budget", "max_request_bytes")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OWNER_NAME_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    TRAINER_ID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    owner_name: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    row_count: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    methods: _containers.RepeatedScalarFieldContainer[str]
    class_counts: _containers.RepeatedScalarFieldContainer[int]
    trainer_id: str
    budget: Budget
    max_request_bytes: int
    def __init__(self, protocol_version: _Optional[str] = ..., owner_name: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., row_count: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ..., feature_names: _Optional[_Iterable[str]] = ..., methods: _Optional[_Iterable[str]] = ..., class_counts: _Optional[_Iterable[int]] = ..., trainer_id: _Optional[str] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., max_request_bytes: _Optional[int] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("cap", "used", "left", "queries", "queries_used", "queries_left")
    CAP_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    QUERIES_USED_FIELD_NUMBER: _ClassVar[int]
    QUERIES_LEFT_FIELD_NUMBER: _ClassVar[int]
    cap: int
    used: int
    left: int
    queries: int
    queries_used: int
    queries_left: int
    def __init__(self, cap: _Optional[int] = ..., used: _Optional[int] = ..., left: _Optional[int] = ..., queries: _Optional[int] = ..., queries_used: _Optional[int] = ..., queries_left: _Optional[int] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("sha256", "present", "size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    present: bool
    size: int
    def __init__(self, sha256: _Optional[str] = ..., present: _Optional[bool] = ..., size: _Optional[int] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("sha256", "total_size", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    total_size: int
    data: bytes
    def __init__(self, sha256: _Optional[str] = ..., total_size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class RawHardSet(_message.Message):
    __slots__ = ("features", "labels")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    features: Tensor
    labels: Tensor
    def __init__(self, features: _Optional[_Union[Tensor, _Mapping]] = ..., labels: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class EmbeddedHardSet(_message.Message):
    __slots__ = ("embeddings", "gradients", "labels")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    embeddings: Tensor
    gradients: Tensor
    labels: Tensor
    def __init__(self, embeddings: _Optional[_Union[Tensor, _Mapping]] = ..., gradients: _Optional[_Union[Tensor, _Mapping]] = ..., labels: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SelectRequest(_message.Message):
    __slots__ = ("request_id", "method", "budget", "model_sha256", "raw", "embedded", "seed", "params", "exclude_row_ids")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ROW_IDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    method: str
    budget: int
    model_sha256: str
    raw: RawHardSet
    embedded: EmbeddedHardSet
    seed: int
    params: _containers.ScalarMap[str, float]
    exclude_row_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, request_id: _Optional[str] = ..., method: _Optional[str] = ..., budget: _Optional[int] = ..., model_sha256: _Optional[str] = ..., raw: _Optional[_Union[RawHardSet, _Mapping]] = ..., embedded: _Optional[_Union[EmbeddedHardSet, _Mapping]] = ..., seed: _Optional[int] = ..., params: _Optional[_Mapping[str, float]] = ..., exclude_row_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class SelectRequestChunk(_message.Message):
    __slots__ = ("total_size", "data")
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    total_size: int
    data: bytes
    def __init__(self, total_size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class RowsChunk(_message.Message):
    __slots__ = ("features", "labels", "row_ids", "scores")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ROW_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    features: Tensor
    labels: Tensor
    row_ids: Tensor
    scores: Tensor
    def __init__(self, features: _Optional[_Union[Tensor, _Mapping]] = ..., labels: _Optional[_Union[Tensor, _Mapping]] = ..., row_ids: _Optional[_Union[Tensor, _Mapping]] = ..., scores: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SelectSummary(_message.Message):
    __slots__ = ("request_id", "rows_sent", "new_rows_charged", "replayed", "budget", "timings", "missing_classes", "shortfall_reason")
    class TimingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_SENT_FIELD_NUMBER: _ClassVar[int]
    NEW_ROWS_CHARGED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MISSING_CLASSES_FIELD_NUMBER: _ClassVar[int]
    SHORTFALL_REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    rows_sent: int
    new_rows_charged: int
    replayed: bool
    budget: Budget
    timings: _containers.ScalarMap[str, float]
    missing_classes: _containers.RepeatedScalarFieldContainer[int]
    shortfall_reason: str
    def __init__(self, request_id: _Optional[str] = ..., rows_sent: _Optional[int] = ..., new_rows_charged: _Optional[int] = ..., replayed: _Optional[bool] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., timings: _Optional[_Mapping[str, float]] = ..., missing_classes: _Optional[_Iterable[int]] = ..., shortfall_reason: _Optional[str] = ...) -> None: ...

class SelectChunk(_message.Message):
    __slots__ = ("rows", "summary")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    rows: RowsChunk
    summary: SelectSummary
    def __init__(self, rows: _Optional[_Union[RowsChunk, _Mapping]] = ..., summary: _Optional[_Union[SelectSummary, _Mapping]] = ...) -> None: ...

class LedgerRequest(_message.Message):
    __slots__ = ("trainer_id",)
    TRAINER_ID_FIELD_NUMBER: _ClassVar[int]
    trainer_id: str
    def __init__(self, trainer_id: _Optional[str] = ...) -> None: ...

class LedgerEntry(_message.Message):
    __slots__ = ("request_id", "method", "rows", "new_rows", "timestamp")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    NEW_ROWS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    method: str
    rows: int
    new_rows: int
    timestamp: float
    def __init__(self, request_id: _Optional[str] = ..., method: _Optional[str] = ..., rows: _Optional[int] = ..., new_rows: _Optional[int] = ..., timestamp: _Optional[float] = ...) -> None: ...

class LedgerResponse(_message.Message):
    __slots__ = ("trainer_id", "budget", "entries")
    TRAINER_ID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    trainer_id: str
    budget: Budget
    entries: _containers.RepeatedCompositeFieldContainer[LedgerEntry]
    def __init__(self, trainer_id: _Optional[str] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., entries: _Optional[_Iterable[_Union[LedgerEntry, _Mapping]]] = ...) -> None: ...
