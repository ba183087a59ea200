"""The Temporal worker: every workflow and activity, on task queue `loomwork`."""

from __future__ import annotations

from datetime import timedelta

from temporalio.worker import Worker

from activities.agents import AgentActivities
from activities.diagnostics import DiagnosticsActivities
from activities.memory import MemoryActivities
from activities.workflow_steps import WorkflowStepActivities
from loomwork.agents.steps import AgentSteps
from loomwork.flows.execution import StepRunner, WorkflowEvents
from loomwork.llm.chat import ChatModel
from server.runtime import Runtime
from workflows.agent_run import AgentRunWorkflow
from workflows.dsl_run import DslRunWorkflow
from workflows.index_messages import IndexMessagesWorkflow
from workflows.stack_check import StackCheckWorkflow

WORKFLOWS = [StackCheckWorkflow, IndexMessagesWorkflow, AgentRunWorkflow, DslRunWorkflow]


def build_worker(runtime: Runtime, *, identity: str | None = None) -> Worker:
    diagnostics = DiagnosticsActivities(runtime.db, runtime.redis)
    memory = MemoryActivities(runtime.recall)
    settings = runtime.settings
    agents = AgentActivities(
        AgentSteps(
            runtime.agents,
            runtime.tools,
            runtime.memory,
            runtime.recall,
            runtime.working_memory,
            runtime.events,
            lambda model: ChatModel(
                model, base_url=settings.openai_base_url, api_key=settings.openai_api_key
            ),
            settings.chat_model,
        )
    )
    workflow_events = WorkflowEvents(runtime.events)
    workflow_steps = WorkflowStepActivities(
        StepRunner(
            runtime.flows,
            workflow_events,
            runtime.tools,
            services={"db": runtime.db, "redis": runtime.redis},
        ),
        workflow_events,
    )
    return Worker(
        runtime.temporal,
        task_queue=runtime.settings.task_queue,
        workflows=WORKFLOWS,
        activities=[
            diagnostics.check_dependencies,
            memory.embed_messages,
            agents.start,
            agents.model_step,
            agents.tool_call,
            agents.step_finished,
            agents.publish,
            agents.finish,
            workflow_steps.run_step,
            workflow_steps.publish,
        ],
        # A killed worker's sticky tasks move to another worker quickly.
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=2),
        graceful_shutdown_timeout=timedelta(seconds=10),
        # Heartbeats carry cancellation to activities: send them promptly.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
        identity=identity,
    )
