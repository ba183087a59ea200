import datetime

from ...buf.validate import validate_pb2 as _validate_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import access_pb2 as _access_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UsageDimension(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USAGE_DIMENSION_UNSPECIFIED: _ClassVar[UsageDimension]
    USAGE_DIMENSION_DAY: _ClassVar[UsageDimension]
    USAGE_DIMENSION_AGENT: _ClassVar[UsageDimension]
    USAGE_DIMENSION_MODEL: _ClassVar[UsageDimension]
    USAGE_DIMENSION_RUN: _ClassVar[UsageDimension]

class UsageRunKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USAGE_RUN_KIND_UNSPECIFIED: _ClassVar[UsageRunKind]
    USAGE_RUN_KIND_AGENT: _ClassVar[UsageRunKind]
    USAGE_RUN_KIND_RAG_ANSWER: _ClassVar[UsageRunKind]
USAGE_DIMENSION_UNSPECIFIED: UsageDimension
USAGE_DIMENSION_DAY: UsageDimension
USAGE_DIMENSION_AGENT: UsageDimension
USAGE_DIMENSION_MODEL: UsageDimension
USAGE_DIMENSION_RUN: UsageDimension
USAGE_RUN_KIND_UNSPECIFIED: UsageRunKind
USAGE_RUN_KIND_AGENT: UsageRunKind
USAGE_RUN_KIND_RAG_ANSWER: UsageRunKind

class UsageSummary(_message.Message):
    __slots__ = ("day", "run_kind", "agent_name", "model", "run_id", "input_tokens", "cached_input_tokens", "output_tokens", "total_tokens", "model_calls", "runs", "cost", "unpriced_models")
    DAY_FIELD_NUMBER: _ClassVar[int]
    RUN_KIND_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_CALLS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_MODELS_FIELD_NUMBER: _ClassVar[int]
    day: str
    run_kind: UsageRunKind
    agent_name: str
    model: str
    run_id: str
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    total_tokens: int
    model_calls: int
    runs: int
    cost: float
    unpriced_models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, day: _Optional[str] = ..., run_kind: _Optional[_Union[UsageRunKind, str]] = ..., agent_name: _Optional[str] = ..., model: _Optional[str] = ..., run_id: _Optional[str] = ..., input_tokens: _Optional[int] = ..., cached_input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., model_calls: _Optional[int] = ..., runs: _Optional[int] = ..., cost: _Optional[float] = ..., unpriced_models: _Optional[_Iterable[str]] = ...) -> None: ...

class ListUsageRequest(_message.Message):
    __slots__ = ("start_time", "end_time", "group_by", "agent_name", "model", "run_id", "page_size", "page_token")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    group_by: _containers.RepeatedScalarFieldContainer[UsageDimension]
    agent_name: str
    model: str
    run_id: str
    page_size: int
    page_token: str
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., group_by: _Optional[_Iterable[_Union[UsageDimension, str]]] = ..., agent_name: _Optional[str] = ..., model: _Optional[str] = ..., run_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListUsageResponse(_message.Message):
    __slots__ = ("usage", "total", "next_page_token")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    usage: _containers.RepeatedCompositeFieldContainer[UsageSummary]
    total: UsageSummary
    next_page_token: str
    def __init__(self, usage: _Optional[_Iterable[_Union[UsageSummary, _Mapping]]] = ..., total: _Optional[_Union[UsageSummary, _Mapping]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetQuotaRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Quota(_message.Message):
    __slots__ = ("tenant", "tokens_per_day", "tokens_used_today", "tokens_reset_time", "concurrent_runs", "runs_under_way")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    TOKENS_USED_TODAY_FIELD_NUMBER: _ClassVar[int]
    TOKENS_RESET_TIME_FIELD_NUMBER: _ClassVar[int]
    CONCURRENT_RUNS_FIELD_NUMBER: _ClassVar[int]
    RUNS_UNDER_WAY_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    tokens_per_day: int
    tokens_used_today: int
    tokens_reset_time: _timestamp_pb2.Timestamp
    concurrent_runs: int
    runs_under_way: int
    def __init__(self, tenant: _Optional[str] = ..., tokens_per_day: _Optional[int] = ..., tokens_used_today: _Optional[int] = ..., tokens_reset_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., concurrent_runs: _Optional[int] = ..., runs_under_way: _Optional[int] = ...) -> None: ...

class GetQuotaResponse(_message.Message):
    __slots__ = ("quota",)
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    quota: Quota
    def __init__(self, quota: _Optional[_Union[Quota, _Mapping]] = ...) -> None: ...
