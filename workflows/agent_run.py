"""AgentRun: one agent call as a durable run — start, then model step → tool calls → … → finish.

The workflow only orders activities (each model call and each tool call is its own
activity with its own retries) and keeps the conversation in its state.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from loomwork.agents.run import (
        AgentRunRequest,
        FinishInput,
        RunOutcome,
        RunPlan,
        StepInput,
        StepOutput,
        ToolInput,
    )
    from loomwork.llm.chat import ChatMessage, ChatUsage
    from loomwork.memory.models import ToolResultPart

START = "agent_start"
MODEL_STEP = "agent_model_step"
TOOL_CALL = "agent_tool_call"
STEP_FINISHED = "agent_step_finished"
FINISH = "agent_finish"

_QUICK = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=5)
_MODEL = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=6,
    non_retryable_error_types=["ModelRequestRejected", "NotFound", "InvalidArgument"],
)


def _cause(error: BaseException) -> tuple[str, str]:
    while isinstance(error, ActivityError) and error.cause is not None:
        error = error.cause
    if isinstance(error, ApplicationError):
        return error.message, error.type or "ApplicationError"
    return str(error), type(error).__name__


@workflow.defn(name="AgentRun")
class AgentRunWorkflow:
    @workflow.run
    async def run(self, request: AgentRunRequest) -> RunOutcome:
        usage = ChatUsage()
        produced: list[ChatMessage] = []
        outcome: RunOutcome
        steps = 0
        try:
            plan = await workflow.execute_activity(
                START,
                request,
                result_type=RunPlan,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_QUICK,
                summary=f"load context for {request.agent_name}",
            )
            conversation = list(plan.conversation)
            finish_reason = "max_steps"
            text = ""
            for step in range(1, plan.max_steps + 1):
                steps = step
                output = await workflow.execute_activity(
                    MODEL_STEP,
                    StepInput(
                        request=request,
                        plan_model=plan.model,
                        step=step,
                        conversation=conversation,
                    ),
                    result_type=StepOutput,
                    start_to_close_timeout=timedelta(minutes=5),
                    retry_policy=_MODEL,
                    summary=f"model {plan.model}, step {step}",
                )
                usage = ChatUsage(
                    prompt_tokens=usage.prompt_tokens + output.usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens + output.usage.completion_tokens,
                    total_tokens=usage.total_tokens + output.usage.total_tokens,
                )
                assistant = output.message()
                conversation.append(assistant)
                produced.append(assistant)
                text = output.text
                if output.tool_calls:
                    results = await asyncio.gather(
                        *(
                            workflow.execute_activity(
                                TOOL_CALL,
                                ToolInput(
                                    request=request,
                                    step=step,
                                    call=call,
                                    argument_error=output.argument_errors.get(call.tool_call_id),
                                ),
                                result_type=ToolResultPart,
                                start_to_close_timeout=timedelta(minutes=2),
                                retry_policy=_QUICK,
                                summary=f"tool {call.tool_name}",
                            )
                            for call in output.tool_calls
                        )
                    )
                    tool_message = ChatMessage.tool(*results)
                    conversation.append(tool_message)
                    produced.append(tool_message)
                await workflow.execute_activity(
                    STEP_FINISHED,
                    args=[request, step, output],
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=_QUICK,
                )
                if not output.tool_calls:
                    finish_reason = "stop"
                    break
            outcome = RunOutcome(
                run_id=request.run_id,
                agent_name=request.agent_name,
                thread_id=request.thread_id,
                model=plan.model,
                status="succeeded",
                finish_reason=finish_reason,
                text=text,
                messages=produced,
                usage=usage,
                steps=steps,
            )
        except ActivityError as error:
            message, error_type = _cause(error)
            outcome = RunOutcome(
                run_id=request.run_id,
                agent_name=request.agent_name,
                thread_id=request.thread_id,
                status="failed",
                finish_reason="error",
                messages=produced,
                usage=usage,
                steps=steps,
                error=message,
                error_type=error_type,
            )
        return await workflow.execute_activity(
            FINISH,
            FinishInput(request=request, outcome=outcome),
            result_type=RunOutcome,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_QUICK,
            summary=f"save and finish ({outcome.status})",
        )
