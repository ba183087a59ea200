"""What the tools of /mcp return (their output schemas), made from the servicers' protos."""

from __future__ import annotations

from typing import Any, Literal

from google.rpc import code_pb2
from pydantic import BaseModel, Field

from protos.loomwork.v1 import agent_pb2, rag_pb2, run_pb2, workflow_pb2
from server.servicers.well_known_convert import struct_to_dict

# -- results -----------------------------------------------------------------------------


class ErrorResult(BaseModel):
    """Why a run or an answer failed."""

    code: str = Field(description="A google.rpc code name, e.g. FAILED_PRECONDITION.")
    reason: str = ""
    message: str


class RunResult(BaseModel):
    """An agent run or a workflow run, as far as it got."""

    kind: Literal["agent", "workflow"]
    run_id: str
    status: str = Field(
        description="PENDING, RUNNING, WAITING, SUSPENDED, SUCCEEDED, FAILED or CANCELED."
    )
    agent_name: str | None = None
    workflow_id: str | None = None
    thread_id: str | None = None
    text: str | None = Field(default=None, description="An agent run's answer.")
    output: dict[str, Any] | None = Field(
        default=None, description="A workflow run's output, or an agent run's structured answer."
    )
    pending_approvals: list[str] | None = Field(
        default=None, description="Tools of a WAITING agent run that wait for a person's decision."
    )
    suspended_steps: list[str] | None = Field(
        default=None, description="Steps of a SUSPENDED workflow run that wait to be resumed."
    )
    error: ErrorResult | None = None


class QueryMatch(BaseModel):
    rank: int
    document_id: str
    title: str
    text: str
    score: float
    chunk_id: str
    page: int | None = None


class QueryResult(BaseModel):
    results: list[QueryMatch]


class CitationResult(BaseModel):
    number: int = Field(description="The n of the [n] marker in the answer text.")
    document_id: str
    title: str
    snippet: str
    source_uri: str | None = None
    page: int | None = None


class AnswerResult(BaseModel):
    answer_id: str
    status: str
    text: str = Field(description="The answer, citing passages with [n] markers.")
    citations: list[CitationResult]
    error: ErrorResult | None = None


# -- from the servicers' protos ---------------------------------------------------------


def run_error_result(error: run_pb2.RunError) -> ErrorResult:
    return ErrorResult(
        code=code_pb2.Code.Name(error.code) if error.code in code_pb2.Code.values() else "UNKNOWN",
        reason=error.reason,
        message=error.message,
    )


def agent_run_result(run: agent_pb2.AgentRun) -> RunResult:
    output = run.output
    return RunResult(
        kind="agent",
        run_id=run.id,
        status=run_pb2.RunStatus.Name(run.status).removeprefix("RUN_STATUS_"),
        agent_name=run.agent_name,
        thread_id=run.thread_id or None,
        text=output.text,
        output=struct_to_dict(output.object) if output.HasField("object") else None,
        pending_approvals=[p.tool_name for p in run.pending_approvals] or None,
        error=run_error_result(run.error) if run.HasField("error") else None,
    )


def workflow_run_result(run: workflow_pb2.WorkflowRun) -> RunResult:
    suspended = workflow_pb2.WORKFLOW_STEP_STATUS_SUSPENDED
    return RunResult(
        kind="workflow",
        run_id=run.id,
        status=workflow_pb2.WorkflowRunStatus.Name(run.status).removeprefix("WORKFLOW_RUN_STATUS_"),
        workflow_id=run.workflow_id,
        output=struct_to_dict(run.output) if run.HasField("output") else None,
        suspended_steps=[s.step_id for s in run.steps if s.status == suspended] or None,
        error=run_error_result(run.error) if run.HasField("error") else None,
    )


def citation_result(citation: rag_pb2.Citation) -> CitationResult:
    return CitationResult(
        number=citation.number,
        document_id=citation.document_id,
        title=citation.title,
        snippet=citation.snippet,
        source_uri=citation.source_uri or None,
        page=citation.page or None,
    )


def query_result(response: rag_pb2.QueryResponse) -> QueryResult:
    return QueryResult(
        results=[
            QueryMatch(
                rank=result.citation.number,
                document_id=result.chunk.document_id,
                title=result.citation.title,
                text=result.chunk.text,
                score=round(result.score, 6),
                chunk_id=result.chunk.id,
                page=result.chunk.page or None,
            )
            for result in response.results
        ]
    )


def answer_result(answer: rag_pb2.RagAnswer) -> AnswerResult:
    return AnswerResult(
        answer_id=answer.id,
        status=run_pb2.RunStatus.Name(answer.status).removeprefix("RUN_STATUS_"),
        text=answer.text,
        citations=[citation_result(c) for c in answer.citations],
    )
