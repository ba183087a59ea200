"""The Temporal worker: every workflow and activity, on task queue `loomwork`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.bridge.proto.workflow_activation import WorkflowActivation
from temporalio.bridge.proto.workflow_completion import WorkflowActivationCompletion
from temporalio.converter import DataConverter, StorageDriverStoreContext
from temporalio.worker import Worker, WorkflowInstance, WorkflowInstanceDetails, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.agents import AgentActivities
from activities.diagnostics import DiagnosticsActivities
from activities.ingestion_start import IngestionStarter
from activities.integrations import IntegrationActivities, TemporalRouteTargets
from activities.memory import MemoryActivities
from activities.rag import RagActivities
from activities.workflow_steps import WorkflowStepActivities
from loomwork.agents.catalog import AgentCatalog
from loomwork.agents.directory import RunDirectory
from loomwork.agents.steps import AgentSteps
from loomwork.agents.store import AgentStore
from loomwork.flows.execution import StepRunner, WorkflowEvents
from server.runtime import Runtime
from workflows.agent_run import AgentRunWorkflow
from workflows.dsl_run import DslRunWorkflow
from workflows.index_messages import IndexMessagesWorkflow
from workflows.ingestion import IngestionWorkflow
from workflows.rag_answer import RagAnswerWorkflow
from workflows.spread import SpreadActivities
from workflows.stack_check import StackCheckWorkflow
from workflows.webhook_delivery import WebhookDeliveryWorkflow

WORKFLOWS = [
    StackCheckWorkflow,
    IndexMessagesWorkflow,
    AgentRunWorkflow,
    DslRunWorkflow,
    WebhookDeliveryWorkflow,
    IngestionWorkflow,
    RagAnswerWorkflow,
]


# Libraries no workflow imports, whose objects' finalizers import lazily (a redis
# ConnectionPool's __del__ imports redis.observability): the garbage collector may run one
# in a workflow activation's thread, and the import would load a second copy of the
# library into that run's sandbox (with a "imported after initial workflow load" warning).
LIBRARIES_PASSED_THROUGH = ("redis", "hiredis", "cryptography", "opentelemetry")


def workflow_runner(sandbox: str, *, context_free: bool = False) -> WorkflowRunner:
    """The sandbox for workflow code (see Settings.workflow_sandbox).

    `context_free`: the worker's data converter has no payload codec and no external storage,
    so no payload needs a per-command serialization context (see `ContextFreeSandboxRunner`).
    """
    restrictions = SandboxRestrictions.default.with_passthrough_modules(*LIBRARIES_PASSED_THROUGH)
    if sandbox == "passthrough":
        restrictions = restrictions.with_passthrough_modules("workflows")
    if context_free:
        return ContextFreeSandboxRunner(restrictions=restrictions)
    return SandboxedWorkflowRunner(restrictions=restrictions)


def needs_no_serialization_context(converter: DataConverter) -> bool:
    """Whether payloads pass through the worker untouched: no codec, no external storage."""
    return converter.payload_codec is None and converter.external_storage is None


@dataclass(frozen=True)
class ContextFreeSandboxRunner(SandboxedWorkflowRunner):
    """The sandbox, for a data converter that needs no serialization context.

    The worker visits every payload of an activation and of its completion several times
    (codec, external storage) and asks the workflow instance for that payload's
    serialization context each time; a sandboxed instance answers by running code inside
    the sandbox (`exec`): a cost on every payload (bench/RESULTS.md, "the sandbox's
    per-payload cost"). With no codec and no external storage the context changes nothing,
    so these instances answer it directly.
    Workflow code itself runs in the sandbox exactly as before.
    """

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return _ContextFreeInstance(super().create_instance(det))


class _ContextFreeInstance(WorkflowInstance):
    def __init__(self, sandboxed: WorkflowInstance) -> None:
        self._sandboxed = sandboxed

    def activate(self, act: WorkflowActivation) -> WorkflowActivationCompletion:
        return self._sandboxed.activate(act)

    def get_serialization_context(self, command_info: object) -> None:
        return None

    def get_external_store_context(self, command_info: object) -> StorageDriverStoreContext:
        return _NO_STORE_CONTEXT

    def get_info(self) -> workflow.Info:
        return self._sandboxed.get_info()

    def get_thread_id(self) -> int | None:
        return self._sandboxed.get_thread_id()


_NO_STORE_CONTEXT = StorageDriverStoreContext(target=None)


def build_worker(runtime: Runtime, *, identity: str | None = None) -> Worker:
    """The worker for every Loomwork workflow and activity, on the runtime's task queue and
    client; the runtime then starts its agent runs as running (this worker takes them)."""
    diagnostics = DiagnosticsActivities(runtime.db, runtime.redis)
    memory = MemoryActivities(runtime.recall)
    settings = runtime.settings
    oauth = runtime.integrations.oauth if runtime.integrations is not None else None
    mcp = runtime.integrations.mcp if runtime.integrations is not None else None
    steps = AgentSteps(
        AgentCatalog(
            runtime.agents, AgentStore(runtime.db), runtime.tools, mcp, runtime.processors
        ),
        runtime.tools,
        runtime.memory,
        runtime.recall,
        runtime.working_memory,
        runtime.events,
        runtime.chat_models,
        settings.chat_model,
        # First steps begun ahead of their activity: a run's by the service, a sub-run's by
        # the step that calls it (LOOMWORK_SPECULATIVE_FIRST_STEP).
        speculation=runtime.speculation if settings.speculative_first_step else None,
        oauth=oauth,
        mcp=mcp,
        max_agent_depth=settings.max_agent_depth,
        usage=runtime.usage.ledger,
        processors=runtime.processors,
    )
    agents = AgentActivities(steps, settings)
    workflow_events = WorkflowEvents(runtime.events)
    workflow_steps = WorkflowStepActivities(
        StepRunner(
            runtime.flows,
            workflow_events,
            runtime.tools,
            services={"db": runtime.db, "redis": runtime.redis},
            oauth=oauth,
        ),
        workflow_events,
    )
    runtime.runs_worker = True
    runtime.agent_steps = steps
    return Worker(
        runtime.temporal,
        task_queue=runtime.settings.task_queue,
        workflows=WORKFLOWS,
        activities=[
            diagnostics.check_dependencies,
            memory.embed_messages,
            agents.start_and_step,
            agents.model_step,
            agents.tool_call,
            agents.mcp_tool_call,
            agents.handoff,
            agents.publish,
            agents.finish,
            *_rag_activities(runtime),
            workflow_steps.run_step,
            workflow_steps.publish,
            _integration_activities(runtime).route,
        ],
        # A killed worker's sticky tasks move to another worker quickly.
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=2),
        graceful_shutdown_timeout=timedelta(seconds=10),
        # Heartbeats carry cancellation to activities: send them promptly.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
        identity=identity,
        interceptors=[
            *(runtime.telemetry.worker_interceptors() if runtime.telemetry else ()),
            SpreadActivities(),  # an ingestion's activities go to every worker
        ],
        workflow_runner=workflow_runner(
            settings.workflow_sandbox,
            context_free=needs_no_serialization_context(runtime.temporal.data_converter),
        ),
    )


def _integration_activities(runtime: Runtime) -> IntegrationActivities:
    integrations = runtime.integrations
    assert integrations is not None
    targets = TemporalRouteTargets(
        runtime.temporal,
        RunDirectory(runtime.redis),
        workflows=runtime.flows,
        rag=runtime.rag,
        task_queue=runtime.settings.task_queue,
        events=runtime.events,
        ingestions=IngestionStarter.from_settings(runtime.temporal, runtime.settings),
    )
    return IntegrationActivities(integrations.sources, integrations.deliveries, targets)


def _rag_activities(runtime: Runtime) -> list[Callable[..., Any]]:
    if runtime.rag is None:
        return []
    return RagActivities(runtime.rag.ingestion, runtime.rag.answers).all()
