import datetime

from ...buf.validate import validate_pb2 as _validate_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import access_pb2 as _access_pb2
from . import run_pb2 as _run_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkflowStepKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKFLOW_STEP_KIND_UNSPECIFIED: _ClassVar[WorkflowStepKind]
    WORKFLOW_STEP_KIND_STEP: _ClassVar[WorkflowStepKind]
    WORKFLOW_STEP_KIND_AGENT: _ClassVar[WorkflowStepKind]
    WORKFLOW_STEP_KIND_TOOL: _ClassVar[WorkflowStepKind]
    WORKFLOW_STEP_KIND_WORKFLOW: _ClassVar[WorkflowStepKind]
    WORKFLOW_STEP_KIND_MAP: _ClassVar[WorkflowStepKind]
    WORKFLOW_STEP_KIND_SLEEP: _ClassVar[WorkflowStepKind]
    WORKFLOW_STEP_KIND_SLEEP_UNTIL: _ClassVar[WorkflowStepKind]
    WORKFLOW_STEP_KIND_BRANCH: _ClassVar[WorkflowStepKind]
    WORKFLOW_STEP_KIND_PARALLEL: _ClassVar[WorkflowStepKind]
    WORKFLOW_STEP_KIND_FOREACH: _ClassVar[WorkflowStepKind]
    WORKFLOW_STEP_KIND_DO_WHILE: _ClassVar[WorkflowStepKind]
    WORKFLOW_STEP_KIND_DO_UNTIL: _ClassVar[WorkflowStepKind]

class WorkflowRunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKFLOW_RUN_STATUS_UNSPECIFIED: _ClassVar[WorkflowRunStatus]
    WORKFLOW_RUN_STATUS_PENDING: _ClassVar[WorkflowRunStatus]
    WORKFLOW_RUN_STATUS_RUNNING: _ClassVar[WorkflowRunStatus]
    WORKFLOW_RUN_STATUS_SUSPENDED: _ClassVar[WorkflowRunStatus]
    WORKFLOW_RUN_STATUS_WAITING: _ClassVar[WorkflowRunStatus]
    WORKFLOW_RUN_STATUS_SUCCEEDED: _ClassVar[WorkflowRunStatus]
    WORKFLOW_RUN_STATUS_FAILED: _ClassVar[WorkflowRunStatus]
    WORKFLOW_RUN_STATUS_CANCELED: _ClassVar[WorkflowRunStatus]

class WorkflowStepStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKFLOW_STEP_STATUS_UNSPECIFIED: _ClassVar[WorkflowStepStatus]
    WORKFLOW_STEP_STATUS_PENDING: _ClassVar[WorkflowStepStatus]
    WORKFLOW_STEP_STATUS_RUNNING: _ClassVar[WorkflowStepStatus]
    WORKFLOW_STEP_STATUS_SUCCEEDED: _ClassVar[WorkflowStepStatus]
    WORKFLOW_STEP_STATUS_FAILED: _ClassVar[WorkflowStepStatus]
    WORKFLOW_STEP_STATUS_SUSPENDED: _ClassVar[WorkflowStepStatus]
    WORKFLOW_STEP_STATUS_WAITING: _ClassVar[WorkflowStepStatus]
    WORKFLOW_STEP_STATUS_SKIPPED: _ClassVar[WorkflowStepStatus]
    WORKFLOW_STEP_STATUS_CANCELED: _ClassVar[WorkflowStepStatus]

class ScheduleOverlapPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCHEDULE_OVERLAP_POLICY_UNSPECIFIED: _ClassVar[ScheduleOverlapPolicy]
    SCHEDULE_OVERLAP_POLICY_SKIP: _ClassVar[ScheduleOverlapPolicy]
    SCHEDULE_OVERLAP_POLICY_BUFFER_ONE: _ClassVar[ScheduleOverlapPolicy]
    SCHEDULE_OVERLAP_POLICY_BUFFER_ALL: _ClassVar[ScheduleOverlapPolicy]
    SCHEDULE_OVERLAP_POLICY_CANCEL_OTHER: _ClassVar[ScheduleOverlapPolicy]
    SCHEDULE_OVERLAP_POLICY_TERMINATE_OTHER: _ClassVar[ScheduleOverlapPolicy]
    SCHEDULE_OVERLAP_POLICY_ALLOW_ALL: _ClassVar[ScheduleOverlapPolicy]
WORKFLOW_STEP_KIND_UNSPECIFIED: WorkflowStepKind
WORKFLOW_STEP_KIND_STEP: WorkflowStepKind
WORKFLOW_STEP_KIND_AGENT: WorkflowStepKind
WORKFLOW_STEP_KIND_TOOL: WorkflowStepKind
WORKFLOW_STEP_KIND_WORKFLOW: WorkflowStepKind
WORKFLOW_STEP_KIND_MAP: WorkflowStepKind
WORKFLOW_STEP_KIND_SLEEP: WorkflowStepKind
WORKFLOW_STEP_KIND_SLEEP_UNTIL: WorkflowStepKind
WORKFLOW_STEP_KIND_BRANCH: WorkflowStepKind
WORKFLOW_STEP_KIND_PARALLEL: WorkflowStepKind
WORKFLOW_STEP_KIND_FOREACH: WorkflowStepKind
WORKFLOW_STEP_KIND_DO_WHILE: WorkflowStepKind
WORKFLOW_STEP_KIND_DO_UNTIL: WorkflowStepKind
WORKFLOW_RUN_STATUS_UNSPECIFIED: WorkflowRunStatus
WORKFLOW_RUN_STATUS_PENDING: WorkflowRunStatus
WORKFLOW_RUN_STATUS_RUNNING: WorkflowRunStatus
WORKFLOW_RUN_STATUS_SUSPENDED: WorkflowRunStatus
WORKFLOW_RUN_STATUS_WAITING: WorkflowRunStatus
WORKFLOW_RUN_STATUS_SUCCEEDED: WorkflowRunStatus
WORKFLOW_RUN_STATUS_FAILED: WorkflowRunStatus
WORKFLOW_RUN_STATUS_CANCELED: WorkflowRunStatus
WORKFLOW_STEP_STATUS_UNSPECIFIED: WorkflowStepStatus
WORKFLOW_STEP_STATUS_PENDING: WorkflowStepStatus
WORKFLOW_STEP_STATUS_RUNNING: WorkflowStepStatus
WORKFLOW_STEP_STATUS_SUCCEEDED: WorkflowStepStatus
WORKFLOW_STEP_STATUS_FAILED: WorkflowStepStatus
WORKFLOW_STEP_STATUS_SUSPENDED: WorkflowStepStatus
WORKFLOW_STEP_STATUS_WAITING: WorkflowStepStatus
WORKFLOW_STEP_STATUS_SKIPPED: WorkflowStepStatus
WORKFLOW_STEP_STATUS_CANCELED: WorkflowStepStatus
SCHEDULE_OVERLAP_POLICY_UNSPECIFIED: ScheduleOverlapPolicy
SCHEDULE_OVERLAP_POLICY_SKIP: ScheduleOverlapPolicy
SCHEDULE_OVERLAP_POLICY_BUFFER_ONE: ScheduleOverlapPolicy
SCHEDULE_OVERLAP_POLICY_BUFFER_ALL: ScheduleOverlapPolicy
SCHEDULE_OVERLAP_POLICY_CANCEL_OTHER: ScheduleOverlapPolicy
SCHEDULE_OVERLAP_POLICY_TERMINATE_OTHER: ScheduleOverlapPolicy
SCHEDULE_OVERLAP_POLICY_ALLOW_ALL: ScheduleOverlapPolicy

class Workflow(_message.Message):
    __slots__ = ("id", "description", "version", "input_schema", "output_schema", "steps")
    ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    id: str
    description: str
    version: str
    input_schema: _struct_pb2.Struct
    output_schema: _struct_pb2.Struct
    steps: _containers.RepeatedCompositeFieldContainer[WorkflowStep]
    def __init__(self, id: _Optional[str] = ..., description: _Optional[str] = ..., version: _Optional[str] = ..., input_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., output_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., steps: _Optional[_Iterable[_Union[WorkflowStep, _Mapping]]] = ...) -> None: ...

class WorkflowStep(_message.Message):
    __slots__ = ("id", "description", "kind", "input_schema", "output_schema", "suspend_schema", "resume_schema", "retry_policy", "children", "condition", "default_branch", "workflow_id", "agent_name", "tool_name", "concurrency", "sleep_duration", "suspend_timeout", "resume_on_timeout")
    ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    SUSPEND_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    RESUME_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    RETRY_POLICY_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BRANCH_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    SLEEP_DURATION_FIELD_NUMBER: _ClassVar[int]
    SUSPEND_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RESUME_ON_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    id: str
    description: str
    kind: WorkflowStepKind
    input_schema: _struct_pb2.Struct
    output_schema: _struct_pb2.Struct
    suspend_schema: _struct_pb2.Struct
    resume_schema: _struct_pb2.Struct
    retry_policy: StepRetryPolicy
    children: _containers.RepeatedCompositeFieldContainer[WorkflowStep]
    condition: str
    default_branch: bool
    workflow_id: str
    agent_name: str
    tool_name: str
    concurrency: int
    sleep_duration: _duration_pb2.Duration
    suspend_timeout: _duration_pb2.Duration
    resume_on_timeout: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., description: _Optional[str] = ..., kind: _Optional[_Union[WorkflowStepKind, str]] = ..., input_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., output_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., suspend_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., resume_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., retry_policy: _Optional[_Union[StepRetryPolicy, _Mapping]] = ..., children: _Optional[_Iterable[_Union[WorkflowStep, _Mapping]]] = ..., condition: _Optional[str] = ..., default_branch: _Optional[bool] = ..., workflow_id: _Optional[str] = ..., agent_name: _Optional[str] = ..., tool_name: _Optional[str] = ..., concurrency: _Optional[int] = ..., sleep_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., suspend_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., resume_on_timeout: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class StepRetryPolicy(_message.Message):
    __slots__ = ("max_attempts", "initial_interval", "backoff_coefficient", "maximum_interval", "non_retryable_error_types", "timeout")
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_COEFFICIENT_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    NON_RETRYABLE_ERROR_TYPES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    max_attempts: int
    initial_interval: _duration_pb2.Duration
    backoff_coefficient: float
    maximum_interval: _duration_pb2.Duration
    non_retryable_error_types: _containers.RepeatedScalarFieldContainer[str]
    timeout: _duration_pb2.Duration
    def __init__(self, max_attempts: _Optional[int] = ..., initial_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., backoff_coefficient: _Optional[float] = ..., maximum_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., non_retryable_error_types: _Optional[_Iterable[str]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WorkflowStepRun(_message.Message):
    __slots__ = ("step_id", "path", "iteration", "kind", "status", "input", "output", "error", "attempts", "start_time", "end_time", "next_attempt_time", "suspend_payload", "resume_data", "suspend_time", "resume_time", "wake_time", "expire_time", "reused_from")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_TIME_FIELD_NUMBER: _ClassVar[int]
    SUSPEND_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RESUME_DATA_FIELD_NUMBER: _ClassVar[int]
    SUSPEND_TIME_FIELD_NUMBER: _ClassVar[int]
    RESUME_TIME_FIELD_NUMBER: _ClassVar[int]
    WAKE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    REUSED_FROM_FIELD_NUMBER: _ClassVar[int]
    step_id: str
    path: str
    iteration: int
    kind: WorkflowStepKind
    status: WorkflowStepStatus
    input: _struct_pb2.Value
    output: _struct_pb2.Value
    error: _run_pb2.RunError
    attempts: int
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    next_attempt_time: _timestamp_pb2.Timestamp
    suspend_payload: _struct_pb2.Struct
    resume_data: _struct_pb2.Struct
    suspend_time: _timestamp_pb2.Timestamp
    resume_time: _timestamp_pb2.Timestamp
    wake_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    reused_from: str
    def __init__(self, step_id: _Optional[str] = ..., path: _Optional[str] = ..., iteration: _Optional[int] = ..., kind: _Optional[_Union[WorkflowStepKind, str]] = ..., status: _Optional[_Union[WorkflowStepStatus, str]] = ..., input: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., output: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., error: _Optional[_Union[_run_pb2.RunError, _Mapping]] = ..., attempts: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_attempt_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., suspend_payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., resume_data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., suspend_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resume_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., wake_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reused_from: _Optional[str] = ...) -> None: ...

class WorkflowRun(_message.Message):
    __slots__ = ("id", "workflow_id", "workflow_version", "status", "input", "output", "error", "steps", "metadata", "create_time", "start_time", "end_time", "last_event_id", "temporal_workflow_id", "temporal_run_id", "schedule_id", "forked_from")
    ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPORAL_WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPORAL_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    FORKED_FROM_FIELD_NUMBER: _ClassVar[int]
    id: str
    workflow_id: str
    workflow_version: str
    status: WorkflowRunStatus
    input: _struct_pb2.Struct
    output: _struct_pb2.Struct
    error: _run_pb2.RunError
    steps: _containers.RepeatedCompositeFieldContainer[WorkflowStepRun]
    metadata: _struct_pb2.Struct
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    last_event_id: int
    temporal_workflow_id: str
    temporal_run_id: str
    schedule_id: str
    forked_from: str
    def __init__(self, id: _Optional[str] = ..., workflow_id: _Optional[str] = ..., workflow_version: _Optional[str] = ..., status: _Optional[_Union[WorkflowRunStatus, str]] = ..., input: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., output: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., error: _Optional[_Union[_run_pb2.RunError, _Mapping]] = ..., steps: _Optional[_Iterable[_Union[WorkflowStepRun, _Mapping]]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_event_id: _Optional[int] = ..., temporal_workflow_id: _Optional[str] = ..., temporal_run_id: _Optional[str] = ..., schedule_id: _Optional[str] = ..., forked_from: _Optional[str] = ...) -> None: ...

class WorkflowRunEvent(_message.Message):
    __slots__ = ("event_id", "run_id", "time", "run_started", "step_started", "step_succeeded", "step_failed", "step_suspended", "step_resumed", "step_retrying", "step_waiting", "step_skipped", "run_finished", "run_failed", "run_pending", "keep_alive")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    RUN_STARTED_FIELD_NUMBER: _ClassVar[int]
    STEP_STARTED_FIELD_NUMBER: _ClassVar[int]
    STEP_SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    STEP_FAILED_FIELD_NUMBER: _ClassVar[int]
    STEP_SUSPENDED_FIELD_NUMBER: _ClassVar[int]
    STEP_RESUMED_FIELD_NUMBER: _ClassVar[int]
    STEP_RETRYING_FIELD_NUMBER: _ClassVar[int]
    STEP_WAITING_FIELD_NUMBER: _ClassVar[int]
    STEP_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    RUN_FINISHED_FIELD_NUMBER: _ClassVar[int]
    RUN_FAILED_FIELD_NUMBER: _ClassVar[int]
    RUN_PENDING_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    run_id: str
    time: _timestamp_pb2.Timestamp
    run_started: WorkflowRunStarted
    step_started: WorkflowStepRun
    step_succeeded: WorkflowStepRun
    step_failed: WorkflowStepRun
    step_suspended: WorkflowStepRun
    step_resumed: WorkflowStepRun
    step_retrying: WorkflowStepRun
    step_waiting: WorkflowStepRun
    step_skipped: WorkflowStepRun
    run_finished: WorkflowRunFinished
    run_failed: _run_pb2.RunError
    run_pending: WorkflowRunPending
    keep_alive: _run_pb2.StreamKeepAlive
    def __init__(self, event_id: _Optional[int] = ..., run_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., run_started: _Optional[_Union[WorkflowRunStarted, _Mapping]] = ..., step_started: _Optional[_Union[WorkflowStepRun, _Mapping]] = ..., step_succeeded: _Optional[_Union[WorkflowStepRun, _Mapping]] = ..., step_failed: _Optional[_Union[WorkflowStepRun, _Mapping]] = ..., step_suspended: _Optional[_Union[WorkflowStepRun, _Mapping]] = ..., step_resumed: _Optional[_Union[WorkflowStepRun, _Mapping]] = ..., step_retrying: _Optional[_Union[WorkflowStepRun, _Mapping]] = ..., step_waiting: _Optional[_Union[WorkflowStepRun, _Mapping]] = ..., step_skipped: _Optional[_Union[WorkflowStepRun, _Mapping]] = ..., run_finished: _Optional[_Union[WorkflowRunFinished, _Mapping]] = ..., run_failed: _Optional[_Union[_run_pb2.RunError, _Mapping]] = ..., run_pending: _Optional[_Union[WorkflowRunPending, _Mapping]] = ..., keep_alive: _Optional[_Union[_run_pb2.StreamKeepAlive, _Mapping]] = ...) -> None: ...

class WorkflowRunPending(_message.Message):
    __slots__ = ("task_queue", "waited")
    TASK_QUEUE_FIELD_NUMBER: _ClassVar[int]
    WAITED_FIELD_NUMBER: _ClassVar[int]
    task_queue: str
    waited: _duration_pb2.Duration
    def __init__(self, task_queue: _Optional[str] = ..., waited: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WorkflowRunStarted(_message.Message):
    __slots__ = ("workflow_id", "workflow_version", "input")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    workflow_version: str
    input: _struct_pb2.Struct
    def __init__(self, workflow_id: _Optional[str] = ..., workflow_version: _Optional[str] = ..., input: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class WorkflowRunFinished(_message.Message):
    __slots__ = ("status", "output")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    status: WorkflowRunStatus
    output: _struct_pb2.Struct
    def __init__(self, status: _Optional[_Union[WorkflowRunStatus, str]] = ..., output: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ListWorkflowsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListWorkflowsResponse(_message.Message):
    __slots__ = ("workflows", "next_page_token")
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workflows: _containers.RepeatedCompositeFieldContainer[Workflow]
    next_page_token: str
    def __init__(self, workflows: _Optional[_Iterable[_Union[Workflow, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id",)
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    def __init__(self, workflow_id: _Optional[str] = ...) -> None: ...

class GetWorkflowResponse(_message.Message):
    __slots__ = ("workflow",)
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    workflow: Workflow
    def __init__(self, workflow: _Optional[_Union[Workflow, _Mapping]] = ...) -> None: ...

class WorkflowServiceStartRunRequest(_message.Message):
    __slots__ = ("workflow_id", "input", "client_run_id", "metadata")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    input: _struct_pb2.Struct
    client_run_id: str
    metadata: _struct_pb2.Struct
    def __init__(self, workflow_id: _Optional[str] = ..., input: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., client_run_id: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class WorkflowServiceStartRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: WorkflowRun
    def __init__(self, run: _Optional[_Union[WorkflowRun, _Mapping]] = ...) -> None: ...

class WorkflowServiceForkRunRequest(_message.Message):
    __slots__ = ("run_id", "from_step_id", "input", "client_run_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STEP_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    from_step_id: str
    input: _struct_pb2.Struct
    client_run_id: str
    def __init__(self, run_id: _Optional[str] = ..., from_step_id: _Optional[str] = ..., input: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., client_run_id: _Optional[str] = ...) -> None: ...

class WorkflowServiceForkRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: WorkflowRun
    def __init__(self, run: _Optional[_Union[WorkflowRun, _Mapping]] = ...) -> None: ...

class WorkflowServiceGetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class WorkflowServiceGetRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: WorkflowRun
    def __init__(self, run: _Optional[_Union[WorkflowRun, _Mapping]] = ...) -> None: ...

class WorkflowServiceListRunsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "workflow_id", "statuses", "schedule_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    workflow_id: str
    statuses: _containers.RepeatedScalarFieldContainer[WorkflowRunStatus]
    schedule_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., workflow_id: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[WorkflowRunStatus, str]]] = ..., schedule_id: _Optional[str] = ...) -> None: ...

class WorkflowServiceListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[WorkflowRun]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[WorkflowRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WorkflowServiceResumeRunRequest(_message.Message):
    __slots__ = ("run_id", "step_id", "resume_data", "request_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_DATA_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    step_id: str
    resume_data: _struct_pb2.Struct
    request_id: str
    def __init__(self, run_id: _Optional[str] = ..., step_id: _Optional[str] = ..., resume_data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class WorkflowServiceResumeRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: WorkflowRun
    def __init__(self, run: _Optional[_Union[WorkflowRun, _Mapping]] = ...) -> None: ...

class WorkflowServiceCancelRunRequest(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class WorkflowServiceCancelRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: WorkflowRun
    def __init__(self, run: _Optional[_Union[WorkflowRun, _Mapping]] = ...) -> None: ...

class WorkflowServiceWatchRunRequest(_message.Message):
    __slots__ = ("run_id", "after_event_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    after_event_id: int
    def __init__(self, run_id: _Optional[str] = ..., after_event_id: _Optional[int] = ...) -> None: ...

class WorkflowServiceWatchRunResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: WorkflowRunEvent
    def __init__(self, event: _Optional[_Union[WorkflowRunEvent, _Mapping]] = ...) -> None: ...

class ScheduledWorkflowRun(_message.Message):
    __slots__ = ("workflow_id", "input", "metadata")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    input: _struct_pb2.Struct
    metadata: _struct_pb2.Struct
    def __init__(self, workflow_id: _Optional[str] = ..., input: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ScheduledAgentRun(_message.Message):
    __slots__ = ("agent_name", "prompt", "thread_id")
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    agent_name: str
    prompt: str
    thread_id: str
    def __init__(self, agent_name: _Optional[str] = ..., prompt: _Optional[str] = ..., thread_id: _Optional[str] = ...) -> None: ...

class Schedule(_message.Message):
    __slots__ = ("id", "description", "cron", "interval", "time_zone", "overlap_policy", "catchup_window", "workflow_run", "agent_run", "paused", "note", "next_action_times", "recent_run_ids", "action_count", "create_time", "temporal_schedule_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_POLICY_FIELD_NUMBER: _ClassVar[int]
    CATCHUP_WINDOW_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_RUN_FIELD_NUMBER: _ClassVar[int]
    AGENT_RUN_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    NEXT_ACTION_TIMES_FIELD_NUMBER: _ClassVar[int]
    RECENT_RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    ACTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    TEMPORAL_SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    description: str
    cron: str
    interval: _duration_pb2.Duration
    time_zone: str
    overlap_policy: ScheduleOverlapPolicy
    catchup_window: _duration_pb2.Duration
    workflow_run: ScheduledWorkflowRun
    agent_run: ScheduledAgentRun
    paused: bool
    note: str
    next_action_times: _containers.RepeatedCompositeFieldContainer[_timestamp_pb2.Timestamp]
    recent_run_ids: _containers.RepeatedScalarFieldContainer[str]
    action_count: int
    create_time: _timestamp_pb2.Timestamp
    temporal_schedule_id: str
    def __init__(self, id: _Optional[str] = ..., description: _Optional[str] = ..., cron: _Optional[str] = ..., interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., time_zone: _Optional[str] = ..., overlap_policy: _Optional[_Union[ScheduleOverlapPolicy, str]] = ..., catchup_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., workflow_run: _Optional[_Union[ScheduledWorkflowRun, _Mapping]] = ..., agent_run: _Optional[_Union[ScheduledAgentRun, _Mapping]] = ..., paused: _Optional[bool] = ..., note: _Optional[str] = ..., next_action_times: _Optional[_Iterable[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]]] = ..., recent_run_ids: _Optional[_Iterable[str]] = ..., action_count: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., temporal_schedule_id: _Optional[str] = ...) -> None: ...

class CreateScheduleRequest(_message.Message):
    __slots__ = ("schedule", "paused")
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    paused: bool
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ..., paused: _Optional[bool] = ...) -> None: ...

class CreateScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ...) -> None: ...

class GetScheduleRequest(_message.Message):
    __slots__ = ("schedule_id",)
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    schedule_id: str
    def __init__(self, schedule_id: _Optional[str] = ...) -> None: ...

class GetScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ...) -> None: ...

class ListSchedulesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSchedulesResponse(_message.Message):
    __slots__ = ("schedules", "next_page_token")
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[Schedule]
    next_page_token: str
    def __init__(self, schedules: _Optional[_Iterable[_Union[Schedule, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PauseScheduleRequest(_message.Message):
    __slots__ = ("schedule_id", "paused", "note")
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    schedule_id: str
    paused: bool
    note: str
    def __init__(self, schedule_id: _Optional[str] = ..., paused: _Optional[bool] = ..., note: _Optional[str] = ...) -> None: ...

class PauseScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ...) -> None: ...

class TriggerScheduleRequest(_message.Message):
    __slots__ = ("schedule_id", "overlap_policy")
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_POLICY_FIELD_NUMBER: _ClassVar[int]
    schedule_id: str
    overlap_policy: ScheduleOverlapPolicy
    def __init__(self, schedule_id: _Optional[str] = ..., overlap_policy: _Optional[_Union[ScheduleOverlapPolicy, str]] = ...) -> None: ...

class TriggerScheduleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteScheduleRequest(_message.Message):
    __slots__ = ("schedule_id",)
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    schedule_id: str
    def __init__(self, schedule_id: _Optional[str] = ...) -> None: ...

class DeleteScheduleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
