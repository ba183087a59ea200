from ...buf.validate import validate_pb2 as _validate_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PiiKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PII_KIND_UNSPECIFIED: _ClassVar[PiiKind]
    PII_KIND_EMAIL: _ClassVar[PiiKind]
    PII_KIND_PHONE: _ClassVar[PiiKind]
    PII_KIND_CARD: _ClassVar[PiiKind]

class PiiAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PII_ACTION_UNSPECIFIED: _ClassVar[PiiAction]
    PII_ACTION_REDACT: _ClassVar[PiiAction]
    PII_ACTION_BLOCK: _ClassVar[PiiAction]

class GuardrailStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GUARDRAIL_STAGE_UNSPECIFIED: _ClassVar[GuardrailStage]
    GUARDRAIL_STAGE_INPUT: _ClassVar[GuardrailStage]
    GUARDRAIL_STAGE_OUTPUT: _ClassVar[GuardrailStage]
PII_KIND_UNSPECIFIED: PiiKind
PII_KIND_EMAIL: PiiKind
PII_KIND_PHONE: PiiKind
PII_KIND_CARD: PiiKind
PII_ACTION_UNSPECIFIED: PiiAction
PII_ACTION_REDACT: PiiAction
PII_ACTION_BLOCK: PiiAction
GUARDRAIL_STAGE_UNSPECIFIED: GuardrailStage
GUARDRAIL_STAGE_INPUT: GuardrailStage
GUARDRAIL_STAGE_OUTPUT: GuardrailStage

class GuardrailProcessor(_message.Message):
    __slots__ = ("pii_redaction", "prompt_injection", "moderation", "input_token_limit", "tool_call_limit", "custom")
    PII_REDACTION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_INJECTION_FIELD_NUMBER: _ClassVar[int]
    MODERATION_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKEN_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    pii_redaction: PiiRedaction
    prompt_injection: PromptInjectionCheck
    moderation: ModerationCheck
    input_token_limit: InputTokenLimit
    tool_call_limit: ToolCallLimit
    custom: CustomProcessor
    def __init__(self, pii_redaction: _Optional[_Union[PiiRedaction, _Mapping]] = ..., prompt_injection: _Optional[_Union[PromptInjectionCheck, _Mapping]] = ..., moderation: _Optional[_Union[ModerationCheck, _Mapping]] = ..., input_token_limit: _Optional[_Union[InputTokenLimit, _Mapping]] = ..., tool_call_limit: _Optional[_Union[ToolCallLimit, _Mapping]] = ..., custom: _Optional[_Union[CustomProcessor, _Mapping]] = ...) -> None: ...

class PiiRedaction(_message.Message):
    __slots__ = ("kinds", "patterns", "action")
    KINDS_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedScalarFieldContainer[PiiKind]
    patterns: _containers.RepeatedCompositeFieldContainer[PiiPattern]
    action: PiiAction
    def __init__(self, kinds: _Optional[_Iterable[_Union[PiiKind, str]]] = ..., patterns: _Optional[_Iterable[_Union[PiiPattern, _Mapping]]] = ..., action: _Optional[_Union[PiiAction, str]] = ...) -> None: ...

class PiiPattern(_message.Message):
    __slots__ = ("name", "regex")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    regex: str
    def __init__(self, name: _Optional[str] = ..., regex: _Optional[str] = ...) -> None: ...

class PromptInjectionCheck(_message.Message):
    __slots__ = ("use_model", "model")
    USE_MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    use_model: bool
    model: str
    def __init__(self, use_model: _Optional[bool] = ..., model: _Optional[str] = ...) -> None: ...

class ModerationCheck(_message.Message):
    __slots__ = ("model", "categories")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    model: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ...) -> None: ...

class InputTokenLimit(_message.Message):
    __slots__ = ("max_tokens",)
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    def __init__(self, max_tokens: _Optional[int] = ...) -> None: ...

class ToolCallLimit(_message.Message):
    __slots__ = ("max_calls",)
    MAX_CALLS_FIELD_NUMBER: _ClassVar[int]
    max_calls: int
    def __init__(self, max_calls: _Optional[int] = ...) -> None: ...

class CustomProcessor(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class AgentRunBlocked(_message.Message):
    __slots__ = ("processor", "reason", "stage")
    PROCESSOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    processor: str
    reason: str
    stage: GuardrailStage
    def __init__(self, processor: _Optional[str] = ..., reason: _Optional[str] = ..., stage: _Optional[_Union[GuardrailStage, str]] = ...) -> None: ...
