import datetime

from ...buf.validate import validate_pb2 as _validate_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import access_pb2 as _access_pb2
from . import guardrails_pb2 as _guardrails_pb2
from . import memory_pb2 as _memory_pb2
from . import message_pb2 as _message_pb2
from . import run_pb2 as _run_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_SOURCE_UNSPECIFIED: _ClassVar[AgentSource]
    AGENT_SOURCE_API: _ClassVar[AgentSource]
    AGENT_SOURCE_CODE: _ClassVar[AgentSource]

class ThreadResolution(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    THREAD_RESOLUTION_UNSPECIFIED: _ClassVar[ThreadResolution]
    THREAD_RESOLUTION_EXISTING: _ClassVar[ThreadResolution]
    THREAD_RESOLUTION_CREATE_IF_MISSING: _ClassVar[ThreadResolution]
    THREAD_RESOLUTION_NEW: _ClassVar[ThreadResolution]
    THREAD_RESOLUTION_LATEST: _ClassVar[ThreadResolution]
    THREAD_RESOLUTION_SESSION: _ClassVar[ThreadResolution]

class AgentFinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_FINISH_REASON_UNSPECIFIED: _ClassVar[AgentFinishReason]
    AGENT_FINISH_REASON_STOP: _ClassVar[AgentFinishReason]
    AGENT_FINISH_REASON_LENGTH: _ClassVar[AgentFinishReason]
    AGENT_FINISH_REASON_CONTENT_FILTER: _ClassVar[AgentFinishReason]
    AGENT_FINISH_REASON_TOOL_CALLS: _ClassVar[AgentFinishReason]
    AGENT_FINISH_REASON_MAX_STEPS: _ClassVar[AgentFinishReason]
    AGENT_FINISH_REASON_CANCELED: _ClassVar[AgentFinishReason]
    AGENT_FINISH_REASON_ERROR: _ClassVar[AgentFinishReason]
AGENT_SOURCE_UNSPECIFIED: AgentSource
AGENT_SOURCE_API: AgentSource
AGENT_SOURCE_CODE: AgentSource
THREAD_RESOLUTION_UNSPECIFIED: ThreadResolution
THREAD_RESOLUTION_EXISTING: ThreadResolution
THREAD_RESOLUTION_CREATE_IF_MISSING: ThreadResolution
THREAD_RESOLUTION_NEW: ThreadResolution
THREAD_RESOLUTION_LATEST: ThreadResolution
THREAD_RESOLUTION_SESSION: ThreadResolution
AGENT_FINISH_REASON_UNSPECIFIED: AgentFinishReason
AGENT_FINISH_REASON_STOP: AgentFinishReason
AGENT_FINISH_REASON_LENGTH: AgentFinishReason
AGENT_FINISH_REASON_CONTENT_FILTER: AgentFinishReason
AGENT_FINISH_REASON_TOOL_CALLS: AgentFinishReason
AGENT_FINISH_REASON_MAX_STEPS: AgentFinishReason
AGENT_FINISH_REASON_CANCELED: AgentFinishReason
AGENT_FINISH_REASON_ERROR: AgentFinishReason

class Agent(_message.Message):
    __slots__ = ("name", "description", "instructions", "model", "model_settings", "tool_names", "memory", "max_steps", "output_schema", "metadata", "source", "create_time", "update_time", "approval_timeout", "handoffs", "fallback_models", "input_processors", "output_processors")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAMES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    HANDOFFS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_MODELS_FIELD_NUMBER: _ClassVar[int]
    INPUT_PROCESSORS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PROCESSORS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    instructions: str
    model: str
    model_settings: _run_pb2.ModelSettings
    tool_names: _containers.RepeatedScalarFieldContainer[str]
    memory: AgentMemorySettings
    max_steps: int
    output_schema: _struct_pb2.Struct
    metadata: _struct_pb2.Struct
    source: AgentSource
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    approval_timeout: _duration_pb2.Duration
    handoffs: _containers.RepeatedScalarFieldContainer[str]
    fallback_models: _containers.RepeatedScalarFieldContainer[str]
    input_processors: _containers.RepeatedCompositeFieldContainer[_guardrails_pb2.GuardrailProcessor]
    output_processors: _containers.RepeatedCompositeFieldContainer[_guardrails_pb2.GuardrailProcessor]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., instructions: _Optional[str] = ..., model: _Optional[str] = ..., model_settings: _Optional[_Union[_run_pb2.ModelSettings, _Mapping]] = ..., tool_names: _Optional[_Iterable[str]] = ..., memory: _Optional[_Union[AgentMemorySettings, _Mapping]] = ..., max_steps: _Optional[int] = ..., output_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., source: _Optional[_Union[AgentSource, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., approval_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., handoffs: _Optional[_Iterable[str]] = ..., fallback_models: _Optional[_Iterable[str]] = ..., input_processors: _Optional[_Iterable[_Union[_guardrails_pb2.GuardrailProcessor, _Mapping]]] = ..., output_processors: _Optional[_Iterable[_Union[_guardrails_pb2.GuardrailProcessor, _Mapping]]] = ...) -> None: ...

class AgentMemorySettings(_message.Message):
    __slots__ = ("last_messages", "semantic_recall", "working_memory", "max_context_tokens", "read_only")
    LAST_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_RECALL_FIELD_NUMBER: _ClassVar[int]
    WORKING_MEMORY_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    last_messages: int
    semantic_recall: SemanticRecallSettings
    working_memory: WorkingMemorySettings
    max_context_tokens: int
    read_only: bool
    def __init__(self, last_messages: _Optional[int] = ..., semantic_recall: _Optional[_Union[SemanticRecallSettings, _Mapping]] = ..., working_memory: _Optional[_Union[WorkingMemorySettings, _Mapping]] = ..., max_context_tokens: _Optional[int] = ..., read_only: _Optional[bool] = ...) -> None: ...

class SemanticRecallSettings(_message.Message):
    __slots__ = ("enabled", "top_k", "message_range", "scope", "min_score")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_RANGE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    top_k: int
    message_range: int
    scope: _memory_pb2.MemoryScope
    min_score: float
    def __init__(self, enabled: _Optional[bool] = ..., top_k: _Optional[int] = ..., message_range: _Optional[int] = ..., scope: _Optional[_Union[_memory_pb2.MemoryScope, str]] = ..., min_score: _Optional[float] = ...) -> None: ...

class WorkingMemorySettings(_message.Message):
    __slots__ = ("enabled", "scope", "template", "schema")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    scope: _memory_pb2.MemoryScope
    template: str
    schema: _struct_pb2.Struct
    def __init__(self, enabled: _Optional[bool] = ..., scope: _Optional[_Union[_memory_pb2.MemoryScope, str]] = ..., template: _Optional[str] = ..., schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Tool(_message.Message):
    __slots__ = ("name", "description", "parameters_schema", "result_schema", "requires_approval", "approval_timeout")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    RESULT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters_schema: _struct_pb2.Struct
    result_schema: _struct_pb2.Struct
    requires_approval: bool
    approval_timeout: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., result_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., requires_approval: _Optional[bool] = ..., approval_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CreateAgentRequest(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ...) -> None: ...

class CreateAgentResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ...) -> None: ...

class GetAgentRequest(_message.Message):
    __slots__ = ("agent_name",)
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    agent_name: str
    def __init__(self, agent_name: _Optional[str] = ...) -> None: ...

class GetAgentResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "source")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    source: AgentSource
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., source: _Optional[_Union[AgentSource, str]] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents", "next_page_token")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[Agent]
    next_page_token: str
    def __init__(self, agents: _Optional[_Iterable[_Union[Agent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateAgentRequest(_message.Message):
    __slots__ = ("agent", "update_mask")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateAgentResponse(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ...) -> None: ...

class DeleteAgentRequest(_message.Message):
    __slots__ = ("agent_name",)
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    agent_name: str
    def __init__(self, agent_name: _Optional[str] = ...) -> None: ...

class DeleteAgentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListToolsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListToolsResponse(_message.Message):
    __slots__ = ("tools", "next_page_token")
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    next_page_token: str
    def __init__(self, tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("agent_name", "messages", "prompt", "thread_id", "resource_id", "thread_resolution", "session_key", "memory", "max_steps", "output_schema", "client_run_id", "metadata", "client_tools")
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    THREAD_RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    SESSION_KEY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    CLIENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TOOLS_FIELD_NUMBER: _ClassVar[int]
    agent_name: str
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    prompt: str
    thread_id: str
    resource_id: str
    thread_resolution: ThreadResolution
    session_key: str
    memory: AgentMemorySettings
    max_steps: int
    output_schema: _struct_pb2.Struct
    client_run_id: str
    metadata: _struct_pb2.Struct
    client_tools: _containers.RepeatedCompositeFieldContainer[ClientTool]
    def __init__(self, agent_name: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., prompt: _Optional[str] = ..., thread_id: _Optional[str] = ..., resource_id: _Optional[str] = ..., thread_resolution: _Optional[_Union[ThreadResolution, str]] = ..., session_key: _Optional[str] = ..., memory: _Optional[_Union[AgentMemorySettings, _Mapping]] = ..., max_steps: _Optional[int] = ..., output_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., client_run_id: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., client_tools: _Optional[_Iterable[_Union[ClientTool, _Mapping]]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: AgentRun
    def __init__(self, run: _Optional[_Union[AgentRun, _Mapping]] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("agent_name", "messages", "prompt", "thread_id", "resource_id", "thread_resolution", "session_key", "memory", "max_steps", "output_schema", "client_run_id", "metadata", "client_tools")
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    THREAD_RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    SESSION_KEY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    CLIENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TOOLS_FIELD_NUMBER: _ClassVar[int]
    agent_name: str
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    prompt: str
    thread_id: str
    resource_id: str
    thread_resolution: ThreadResolution
    session_key: str
    memory: AgentMemorySettings
    max_steps: int
    output_schema: _struct_pb2.Struct
    client_run_id: str
    metadata: _struct_pb2.Struct
    client_tools: _containers.RepeatedCompositeFieldContainer[ClientTool]
    def __init__(self, agent_name: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., prompt: _Optional[str] = ..., thread_id: _Optional[str] = ..., resource_id: _Optional[str] = ..., thread_resolution: _Optional[_Union[ThreadResolution, str]] = ..., session_key: _Optional[str] = ..., memory: _Optional[_Union[AgentMemorySettings, _Mapping]] = ..., max_steps: _Optional[int] = ..., output_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., client_run_id: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., client_tools: _Optional[_Iterable[_Union[ClientTool, _Mapping]]] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: AgentRunEvent
    def __init__(self, event: _Optional[_Union[AgentRunEvent, _Mapping]] = ...) -> None: ...

class StreamObjectRequest(_message.Message):
    __slots__ = ("agent_name", "messages", "prompt", "thread_id", "resource_id", "thread_resolution", "session_key", "memory", "max_steps", "output_schema", "client_run_id", "metadata", "client_tools")
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    THREAD_RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    SESSION_KEY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    CLIENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TOOLS_FIELD_NUMBER: _ClassVar[int]
    agent_name: str
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    prompt: str
    thread_id: str
    resource_id: str
    thread_resolution: ThreadResolution
    session_key: str
    memory: AgentMemorySettings
    max_steps: int
    output_schema: _struct_pb2.Struct
    client_run_id: str
    metadata: _struct_pb2.Struct
    client_tools: _containers.RepeatedCompositeFieldContainer[ClientTool]
    def __init__(self, agent_name: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., prompt: _Optional[str] = ..., thread_id: _Optional[str] = ..., resource_id: _Optional[str] = ..., thread_resolution: _Optional[_Union[ThreadResolution, str]] = ..., session_key: _Optional[str] = ..., memory: _Optional[_Union[AgentMemorySettings, _Mapping]] = ..., max_steps: _Optional[int] = ..., output_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., client_run_id: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., client_tools: _Optional[_Iterable[_Union[ClientTool, _Mapping]]] = ...) -> None: ...

class StreamObjectResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: AgentRunEvent
    def __init__(self, event: _Optional[_Union[AgentRunEvent, _Mapping]] = ...) -> None: ...

class AgentRun(_message.Message):
    __slots__ = ("id", "agent_name", "thread_id", "resource_id", "status", "model", "input_messages", "output", "pending_approvals", "pending_tool_calls", "error", "metadata", "create_time", "start_time", "end_time", "last_event_id", "temporal_workflow_id", "temporal_run_id", "trace_id", "schedule_id", "forked_from", "reused_steps")
    ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PENDING_APPROVALS_FIELD_NUMBER: _ClassVar[int]
    PENDING_TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPORAL_WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPORAL_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    FORKED_FROM_FIELD_NUMBER: _ClassVar[int]
    REUSED_STEPS_FIELD_NUMBER: _ClassVar[int]
    id: str
    agent_name: str
    thread_id: str
    resource_id: str
    status: _run_pb2.RunStatus
    model: str
    input_messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    output: AgentRunOutput
    pending_approvals: _containers.RepeatedCompositeFieldContainer[PendingApproval]
    pending_tool_calls: _containers.RepeatedCompositeFieldContainer[PendingToolCall]
    error: _run_pb2.RunError
    metadata: _struct_pb2.Struct
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    last_event_id: int
    temporal_workflow_id: str
    temporal_run_id: str
    trace_id: str
    schedule_id: str
    forked_from: str
    reused_steps: int
    def __init__(self, id: _Optional[str] = ..., agent_name: _Optional[str] = ..., thread_id: _Optional[str] = ..., resource_id: _Optional[str] = ..., status: _Optional[_Union[_run_pb2.RunStatus, str]] = ..., model: _Optional[str] = ..., input_messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., output: _Optional[_Union[AgentRunOutput, _Mapping]] = ..., pending_approvals: _Optional[_Iterable[_Union[PendingApproval, _Mapping]]] = ..., pending_tool_calls: _Optional[_Iterable[_Union[PendingToolCall, _Mapping]]] = ..., error: _Optional[_Union[_run_pb2.RunError, _Mapping]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_event_id: _Optional[int] = ..., temporal_workflow_id: _Optional[str] = ..., temporal_run_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., schedule_id: _Optional[str] = ..., forked_from: _Optional[str] = ..., reused_steps: _Optional[int] = ...) -> None: ...

class AgentRunOutput(_message.Message):
    __slots__ = ("messages", "text", "object", "usage", "finish_reason", "steps", "context")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    text: str
    object: _struct_pb2.Struct
    usage: _message_pb2.Usage
    finish_reason: AgentFinishReason
    steps: int
    context: ContextUsage
    def __init__(self, messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., text: _Optional[str] = ..., object: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., usage: _Optional[_Union[_message_pb2.Usage, _Mapping]] = ..., finish_reason: _Optional[_Union[AgentFinishReason, str]] = ..., steps: _Optional[int] = ..., context: _Optional[_Union[ContextUsage, _Mapping]] = ...) -> None: ...

class ContextUsage(_message.Message):
    __slots__ = ("tokens_in_context", "messages_recalled", "messages_trimmed", "tokens_trimmed")
    TOKENS_IN_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_RECALLED_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_TRIMMED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_TRIMMED_FIELD_NUMBER: _ClassVar[int]
    tokens_in_context: int
    messages_recalled: int
    messages_trimmed: int
    tokens_trimmed: int
    def __init__(self, tokens_in_context: _Optional[int] = ..., messages_recalled: _Optional[int] = ..., messages_trimmed: _Optional[int] = ..., tokens_trimmed: _Optional[int] = ...) -> None: ...

class PendingApproval(_message.Message):
    __slots__ = ("tool_call_id", "tool_name", "arguments", "step", "request_time", "expire_time", "run_path")
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    RUN_PATH_FIELD_NUMBER: _ClassVar[int]
    tool_call_id: str
    tool_name: str
    arguments: _struct_pb2.Struct
    step: int
    request_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    run_path: str
    def __init__(self, tool_call_id: _Optional[str] = ..., tool_name: _Optional[str] = ..., arguments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., step: _Optional[int] = ..., request_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., run_path: _Optional[str] = ...) -> None: ...

class ApprovalDecision(_message.Message):
    __slots__ = ("tool_call_id", "approve", "reject")
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    tool_call_id: str
    approve: ToolCallApproval
    reject: ToolCallRejection
    def __init__(self, tool_call_id: _Optional[str] = ..., approve: _Optional[_Union[ToolCallApproval, _Mapping]] = ..., reject: _Optional[_Union[ToolCallRejection, _Mapping]] = ...) -> None: ...

class ToolCallApproval(_message.Message):
    __slots__ = ("edited_arguments",)
    EDITED_ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    edited_arguments: _struct_pb2.Struct
    def __init__(self, edited_arguments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ToolCallRejection(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ApprovalResolved(_message.Message):
    __slots__ = ("tool_call_id", "tool_name", "approved", "reason", "arguments", "arguments_edited")
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_EDITED_FIELD_NUMBER: _ClassVar[int]
    tool_call_id: str
    tool_name: str
    approved: bool
    reason: str
    arguments: _struct_pb2.Struct
    arguments_edited: bool
    def __init__(self, tool_call_id: _Optional[str] = ..., tool_name: _Optional[str] = ..., approved: _Optional[bool] = ..., reason: _Optional[str] = ..., arguments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., arguments_edited: _Optional[bool] = ...) -> None: ...

class AgentRunEvent(_message.Message):
    __slots__ = ("event_id", "run_id", "time", "step", "run_path", "run_started", "text_delta", "tool_call", "tool_result", "approval_requested", "approval_resolved", "object_partial", "object_final", "usage", "step_retrying", "step_finished", "run_finished", "run_failed", "run_pending", "tool_call_requested", "handoff", "blocked", "keep_alive")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    RUN_PATH_FIELD_NUMBER: _ClassVar[int]
    RUN_STARTED_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_RESOLVED_FIELD_NUMBER: _ClassVar[int]
    OBJECT_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FINAL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_RETRYING_FIELD_NUMBER: _ClassVar[int]
    STEP_FINISHED_FIELD_NUMBER: _ClassVar[int]
    RUN_FINISHED_FIELD_NUMBER: _ClassVar[int]
    RUN_FAILED_FIELD_NUMBER: _ClassVar[int]
    RUN_PENDING_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    run_id: str
    time: _timestamp_pb2.Timestamp
    step: int
    run_path: str
    run_started: AgentRunStarted
    text_delta: _run_pb2.TextDelta
    tool_call: _message_pb2.ToolCallPart
    tool_result: _message_pb2.ToolResultPart
    approval_requested: PendingApproval
    approval_resolved: ApprovalResolved
    object_partial: ObjectPartial
    object_final: ObjectFinal
    usage: _message_pb2.Usage
    step_retrying: AgentStepRetrying
    step_finished: AgentStepFinished
    run_finished: AgentRunFinished
    run_failed: _run_pb2.RunError
    run_pending: AgentRunPending
    tool_call_requested: PendingToolCall
    handoff: AgentHandoff
    blocked: _guardrails_pb2.AgentRunBlocked
    keep_alive: _run_pb2.StreamKeepAlive
    def __init__(self, event_id: _Optional[int] = ..., run_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step: _Optional[int] = ..., run_path: _Optional[str] = ..., run_started: _Optional[_Union[AgentRunStarted, _Mapping]] = ..., text_delta: _Optional[_Union[_run_pb2.TextDelta, _Mapping]] = ..., tool_call: _Optional[_Union[_message_pb2.ToolCallPart, _Mapping]] = ..., tool_result: _Optional[_Union[_message_pb2.ToolResultPart, _Mapping]] = ..., approval_requested: _Optional[_Union[PendingApproval, _Mapping]] = ..., approval_resolved: _Optional[_Union[ApprovalResolved, _Mapping]] = ..., object_partial: _Optional[_Union[ObjectPartial, _Mapping]] = ..., object_final: _Optional[_Union[ObjectFinal, _Mapping]] = ..., usage: _Optional[_Union[_message_pb2.Usage, _Mapping]] = ..., step_retrying: _Optional[_Union[AgentStepRetrying, _Mapping]] = ..., step_finished: _Optional[_Union[AgentStepFinished, _Mapping]] = ..., run_finished: _Optional[_Union[AgentRunFinished, _Mapping]] = ..., run_failed: _Optional[_Union[_run_pb2.RunError, _Mapping]] = ..., run_pending: _Optional[_Union[AgentRunPending, _Mapping]] = ..., tool_call_requested: _Optional[_Union[PendingToolCall, _Mapping]] = ..., handoff: _Optional[_Union[AgentHandoff, _Mapping]] = ..., blocked: _Optional[_Union[_guardrails_pb2.AgentRunBlocked, _Mapping]] = ..., keep_alive: _Optional[_Union[_run_pb2.StreamKeepAlive, _Mapping]] = ...) -> None: ...

class AgentHandoff(_message.Message):
    __slots__ = ("from_agent", "to_agent", "tool_call_id", "model")
    FROM_AGENT_FIELD_NUMBER: _ClassVar[int]
    TO_AGENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    from_agent: str
    to_agent: str
    tool_call_id: str
    model: str
    def __init__(self, from_agent: _Optional[str] = ..., to_agent: _Optional[str] = ..., tool_call_id: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class AgentRunPending(_message.Message):
    __slots__ = ("task_queue", "waited")
    TASK_QUEUE_FIELD_NUMBER: _ClassVar[int]
    WAITED_FIELD_NUMBER: _ClassVar[int]
    task_queue: str
    waited: _duration_pb2.Duration
    def __init__(self, task_queue: _Optional[str] = ..., waited: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AgentRunStarted(_message.Message):
    __slots__ = ("agent_name", "thread_id", "resource_id", "model", "input_messages", "max_steps", "structured_output", "trace_id")
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    agent_name: str
    thread_id: str
    resource_id: str
    model: str
    input_messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    max_steps: int
    structured_output: bool
    trace_id: str
    def __init__(self, agent_name: _Optional[str] = ..., thread_id: _Optional[str] = ..., resource_id: _Optional[str] = ..., model: _Optional[str] = ..., input_messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., max_steps: _Optional[int] = ..., structured_output: _Optional[bool] = ..., trace_id: _Optional[str] = ...) -> None: ...

class ObjectPartial(_message.Message):
    __slots__ = ("object",)
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    object: _struct_pb2.Struct
    def __init__(self, object: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ObjectFinal(_message.Message):
    __slots__ = ("object",)
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    object: _struct_pb2.Struct
    def __init__(self, object: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class AgentStepRetrying(_message.Message):
    __slots__ = ("attempt", "error", "backoff")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    error: _run_pb2.RunError
    backoff: _duration_pb2.Duration
    def __init__(self, attempt: _Optional[int] = ..., error: _Optional[_Union[_run_pb2.RunError, _Mapping]] = ..., backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AgentStepFinished(_message.Message):
    __slots__ = ("finish_reason", "messages", "usage", "model", "reused")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    finish_reason: AgentFinishReason
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    usage: _message_pb2.Usage
    model: str
    reused: bool
    def __init__(self, finish_reason: _Optional[_Union[AgentFinishReason, str]] = ..., messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., usage: _Optional[_Union[_message_pb2.Usage, _Mapping]] = ..., model: _Optional[str] = ..., reused: _Optional[bool] = ...) -> None: ...

class AgentRunFinished(_message.Message):
    __slots__ = ("status", "output", "error")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    status: _run_pb2.RunStatus
    output: AgentRunOutput
    error: _run_pb2.RunError
    def __init__(self, status: _Optional[_Union[_run_pb2.RunStatus, str]] = ..., output: _Optional[_Union[AgentRunOutput, _Mapping]] = ..., error: _Optional[_Union[_run_pb2.RunError, _Mapping]] = ...) -> None: ...

class AgentServiceGetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class AgentServiceGetRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: AgentRun
    def __init__(self, run: _Optional[_Union[AgentRun, _Mapping]] = ...) -> None: ...

class AgentServiceListRunsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "agent_name", "thread_id", "resource_id", "statuses", "schedule_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    agent_name: str
    thread_id: str
    resource_id: str
    statuses: _containers.RepeatedScalarFieldContainer[_run_pb2.RunStatus]
    schedule_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., agent_name: _Optional[str] = ..., thread_id: _Optional[str] = ..., resource_id: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[_run_pb2.RunStatus, str]]] = ..., schedule_id: _Optional[str] = ...) -> None: ...

class AgentServiceListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[AgentRun]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[AgentRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AgentServiceWatchRunRequest(_message.Message):
    __slots__ = ("run_id", "after_event_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    after_event_id: int
    def __init__(self, run_id: _Optional[str] = ..., after_event_id: _Optional[int] = ...) -> None: ...

class AgentServiceWatchRunResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: AgentRunEvent
    def __init__(self, event: _Optional[_Union[AgentRunEvent, _Mapping]] = ...) -> None: ...

class AgentServiceCancelRunRequest(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AgentServiceCancelRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: AgentRun
    def __init__(self, run: _Optional[_Union[AgentRun, _Mapping]] = ...) -> None: ...

class AgentServiceResumeRunRequest(_message.Message):
    __slots__ = ("run_id", "decisions")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    decisions: _containers.RepeatedCompositeFieldContainer[ApprovalDecision]
    def __init__(self, run_id: _Optional[str] = ..., decisions: _Optional[_Iterable[_Union[ApprovalDecision, _Mapping]]] = ...) -> None: ...

class ClientTool(_message.Message):
    __slots__ = ("name", "description", "parameters_schema", "timeout")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters_schema: _struct_pb2.Struct
    timeout: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class PendingToolCall(_message.Message):
    __slots__ = ("tool_call_id", "tool_name", "arguments", "step", "request_time", "expire_time", "run_path")
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    RUN_PATH_FIELD_NUMBER: _ClassVar[int]
    tool_call_id: str
    tool_name: str
    arguments: _struct_pb2.Struct
    step: int
    request_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    run_path: str
    def __init__(self, tool_call_id: _Optional[str] = ..., tool_name: _Optional[str] = ..., arguments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., step: _Optional[int] = ..., request_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., run_path: _Optional[str] = ...) -> None: ...

class ClientToolResult(_message.Message):
    __slots__ = ("tool_call_id", "result", "error")
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    tool_call_id: str
    result: _struct_pb2.Value
    error: str
    def __init__(self, tool_call_id: _Optional[str] = ..., result: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class SubmitToolResultsRequest(_message.Message):
    __slots__ = ("run_id", "results")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    results: _containers.RepeatedCompositeFieldContainer[ClientToolResult]
    def __init__(self, run_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[ClientToolResult, _Mapping]]] = ...) -> None: ...

class SubmitToolResultsResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: AgentRun
    def __init__(self, run: _Optional[_Union[AgentRun, _Mapping]] = ...) -> None: ...

class AgentServiceResumeRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: AgentRun
    def __init__(self, run: _Optional[_Union[AgentRun, _Mapping]] = ...) -> None: ...

class AgentServiceForkRunRequest(_message.Message):
    __slots__ = ("run_id", "from_step", "edited_messages", "client_run_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    EDITED_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    from_step: int
    edited_messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    client_run_id: str
    def __init__(self, run_id: _Optional[str] = ..., from_step: _Optional[int] = ..., edited_messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., client_run_id: _Optional[str] = ...) -> None: ...

class AgentServiceForkRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: AgentRun
    def __init__(self, run: _Optional[_Union[AgentRun, _Mapping]] = ...) -> None: ...
