"""Connecting to Temporal with the pydantic data converter, our search attributes, and
asking a run's workflow for its state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import (
    Client,
    Interceptor,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    TerminatedError,
)
from temporalio.exceptions import (
    TimeoutError as TemporalTimeoutError,
)
from temporalio.runtime import Runtime as TemporalRuntime
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from loomwork.errors import FailedPrecondition, NotFound, Unavailable
from workflows import search_attributes

log = logging.getLogger(__name__)
T = TypeVar("T")

SEARCH_ATTRIBUTES = tuple(key.name for key in search_attributes.ALL)
KEYWORD = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
# How a run's workflow ends when it does not end by itself: an operator terminated it, it
# timed out, or it failed outside what the workflow catches (e.g. bookkeeping whose retries
# ran out). Its run is FAILED, with the error `closure_error` reads.
ABNORMAL_END = frozenset(
    {
        WorkflowExecutionStatus.FAILED,
        WorkflowExecutionStatus.TERMINATED,
        WorkflowExecutionStatus.TIMED_OUT,
    }
)


def not_taken(description: WorkflowExecutionDescription) -> bool:
    """The run is open and no worker has taken its first workflow task yet (its history is
    the start and that task): there is nothing to query, and a query would wait for one."""
    return description.status == WorkflowExecutionStatus.RUNNING and description.history_length <= 2


async def pending_wait(handle: WorkflowHandle[Any, Any], run_id: str) -> tuple[str, float] | None:
    """While no worker has taken the run: its task queue and the seconds it has waited; else
    None (None too when Temporal cannot tell: it is for a notice, and the caller goes on)."""
    try:
        description = await handle.describe()
    except RPCError as error:
        log.warning("could not tell whether run %s is pending: %s", run_id, error.message)
        return None
    if not not_taken(description):
        return None
    started = description.start_time or datetime.now(UTC)
    return description.task_queue, round((datetime.now(UTC) - started).total_seconds(), 1)


async def workflow_open(client: Client, workflow_id: str) -> bool | None:
    """Whether the workflow `workflow_id` is open (True) or closed (False); None when
    Temporal has no such workflow. Unavailable when Temporal cannot say."""
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise Unavailable(f"Temporal: {error.message}") from error
    return description.status == WorkflowExecutionStatus.RUNNING


def eagerly_started(handle: WorkflowHandle[Any, Any]) -> bool:
    """Whether the start that returned `handle` handed the run's first workflow task to a
    worker of this process (eager start). temporalio keeps this on the handle without a
    public accessor (1.35); if that changes this answers False, and runs simply start
    without a speculative first step (tests/test_agents_speculation.py notices)."""
    return bool(getattr(handle, "__temporal_eagerly_started", False))


def newly_started(handle: WorkflowHandle[Any, Any]) -> bool:
    """Whether the start that returned `handle` created the run (not joined one, as
    USE_EXISTING does). temporalio keeps the start's response on the handle without a
    public accessor (1.35); if that changes this answers False, and a worker chosen to
    begin a run's first step is told to drop it (tests/test_agents_first_step_routing.py
    notices)."""
    response = getattr(handle, "_start_workflow_response", None)
    return bool(getattr(response, "started", False))


async def start_input(
    handle: WorkflowHandle[Any, Any], converter: DataConverter, input_type: type[T]
) -> T | None:
    """The run's input as it was started, read from its first history event."""
    async for event in handle.fetch_history_events():
        if event.HasField("workflow_execution_started_event_attributes"):
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            [value] = await converter.decode(payloads, [input_type])
            return value if isinstance(value, input_type) else None
    return None


async def closure_error(handle: WorkflowHandle[Any, Any]) -> tuple[str, str]:
    """Why a workflow that ended abnormally (ABNORMAL_END) ended, as (error type, message):
    `Terminated` with the operator's reason, `TimedOut`, or its failure's own type and
    message (the innermost cause of an activity's or child's failure)."""
    try:
        await handle.result(follow_runs=False)
    except WorkflowFailureError as failure:
        cause: BaseException | None = failure.cause
        if isinstance(cause, TerminatedError):
            return "Terminated", f"the run's workflow was terminated: {cause.message}"
        if isinstance(cause, TemporalTimeoutError):
            return "TimedOut", "the run's workflow timed out"
        while isinstance(cause, ActivityError | ChildWorkflowError) and cause.cause is not None:
            cause = cause.cause
        if isinstance(cause, ApplicationError):
            return cause.type or "ApplicationError", cause.message
        return type(cause).__name__, str(cause)
    except RPCError as error:
        raise Unavailable(f"Temporal: {error.message}") from error
    return "Failed", "the run's workflow ended without its result"


@dataclass(frozen=True)
class WorkflowClosure:
    """How a workflow closed: `canceled` (its cancellation was asked for), else `error`
    says why it ended without finishing its work ("" when it completed)."""

    canceled: bool
    error: str


async def how_it_closed(client: Client, workflow_id: str) -> WorkflowClosure | None:
    """None while the workflow `workflow_id` runs, or while Temporal does not know it (its
    start may be under way); else how it closed. Unavailable when Temporal cannot say."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        description = await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise Unavailable(f"Temporal: {error.message}") from error
    status = description.status
    if status in (None, WorkflowExecutionStatus.RUNNING):
        return None
    if status in ABNORMAL_END:
        return WorkflowClosure(canceled=False, error=(await closure_error(handle))[1])
    return WorkflowClosure(canceled=status == WorkflowExecutionStatus.CANCELED, error="")


# How long a read of a running workflow's state (a query) waits for a worker to answer.
STATE_QUERY_TIMEOUT = timedelta(seconds=5)


async def query_state(
    handle: WorkflowHandle[Any, Any], query: Callable[[Any], T], run_id: str
) -> T:
    """Ask a run's workflow for its state: a worker answers, so the wait is bounded and a
    missing worker is said plainly (UNAVAILABLE) instead of hanging the caller."""
    try:
        return await handle.query(query, rpc_timeout=STATE_QUERY_TIMEOUT)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise NotFound(f"run {run_id!r} not found") from error
        if error.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            raise Unavailable(
                f"run {run_id!r}: no worker answered within "
                f"{STATE_QUERY_TIMEOUT.total_seconds():g} s; are workers running?"
            ) from error
        raise Unavailable(f"Temporal: {error.message}") from error


async def connect_temporal(
    address: str,
    namespace: str,
    *,
    tls: TLSConfig | bool = False,
    api_key: str | None = None,
    wait_seconds: float = 30.0,
    runtime: TemporalRuntime | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Client:
    """Connect (over TLS and with an API key when given: Temporal Cloud), retrying for up to
    `wait_seconds` while the server comes up; `runtime` and `interceptors`: the process's
    telemetry (server/telemetry/)."""
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while True:
        try:
            return await Client.connect(
                address,
                namespace=namespace,
                data_converter=pydantic_data_converter,
                tls=tls,
                api_key=api_key or None,
                runtime=runtime,
                interceptors=interceptors,
            )
        except Exception as exc:  # connection refused, DNS, TLS...
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(f"cannot reach Temporal at {address}: {exc}") from exc
            await asyncio.sleep(0.5)


async def register_search_attributes(
    client: Client, namespace: str, *, attempts: int = 5
) -> list[str]:
    """Add our Keyword search attributes that the namespace lacks; return the ones this call
    added. Safe when several processes start at once: an add that fails (another process
    added them first, a conflicting update of the namespace's metadata) is checked by
    listing again, and retried. An attribute of ours registered with another type, or a
    namespace where adding is not allowed (Temporal Cloud without the right role), is
    FailedPrecondition naming what to register."""
    added: list[str] = []
    for attempt in range(attempts):
        missing = await _missing_search_attributes(client, namespace)
        if not missing:
            return added
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(
                    namespace=namespace, search_attributes=dict.fromkeys(missing, KEYWORD)
                )
            )
        except RPCError as error:
            if error.status == RPCStatusCode.PERMISSION_DENIED:
                raise FailedPrecondition(
                    f"cannot add search attributes to Temporal namespace {namespace!r} "
                    f"({error.message}): register {', '.join(missing)} as Keyword (on "
                    "Temporal Cloud: `tcld namespace search-attributes add`)"
                ) from error
            log.info("adding search attributes: %s; checking again", error.message)
            await asyncio.sleep(0.1 * 2**attempt)
            continue
        log.info("registered search attributes %s", ", ".join(missing))
        added.extend(missing)
    missing = await _missing_search_attributes(client, namespace)
    if missing:
        raise Unavailable(
            f"could not add search attributes {', '.join(missing)} to Temporal namespace "
            f"{namespace!r} in {attempts} attempts"
        )
    return added


async def _missing_search_attributes(client: Client, namespace: str) -> list[str]:
    """Ours that the namespace lacks; FailedPrecondition if one has another type than Keyword."""
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    types = listed.custom_attributes
    wrong = [name for name in SEARCH_ATTRIBUTES if name in types and types[name] != KEYWORD]
    if wrong:
        described = ", ".join(
            f"{name} ({IndexedValueType.Name(types[name]).removeprefix('INDEXED_VALUE_TYPE_')})"
            for name in wrong
        )
        raise FailedPrecondition(
            f"Temporal namespace {namespace!r} has search attributes {described}: Loomwork "
            "needs them as Keyword"
        )
    return [name for name in SEARCH_ATTRIBUTES if name not in types]


async def temporal_reachable(client: Client) -> bool:
    try:
        return await client.service_client.check_health(timeout=timedelta(seconds=2))
    except Exception:
        return False
