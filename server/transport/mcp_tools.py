"""The tools /mcp offers a tenant: their arguments and results, and how each one calls the
servicers (the same requests, validation and errors as the gRPC calls it stands for).

One `run_agent` tool chooses the agent by an argument rather than one tool per agent: the
tool list stays the same five tools however many agents a tenant has (MCP clients cache it,
some cap the number of tools, and stateless HTTP cannot tell them when it changes), and the
agents are listed where a model looks when it fills the argument (the enum and its
description). Indexes and workflows are chosen the same way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import grpc
from mcp_types import Tool, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from loomwork.errors import NotFound
from loomwork.flows.description import WorkflowInfo
from protos.loomwork.v1 import agent_pb2, rag_pb2, workflow_pb2
from server.runtime import Runtime
from server.servicers.agent import AgentServicer
from server.servicers.rag import RagServicer
from server.servicers.well_known_convert import dict_to_struct
from server.servicers.workflow import WorkflowServicer
from server.transport.access import guarded
from server.transport.mcp_results import (
    AnswerResult,
    QueryResult,
    RunResult,
    agent_run_result,
    answer_result,
    query_result,
    run_error_result,
    workflow_run_result,
)

agent_service = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
rag_service = rag_pb2.DESCRIPTOR.services_by_name["RagService"]
workflow_service = workflow_pb2.DESCRIPTOR.services_by_name["WorkflowService"]
# The servicers take a gRPC context and read nothing from it; a call from /mcp has none.
NO_GRPC_CONTEXT = cast(grpc.aio.ServicerContext, None)
# Choices (agents, indexes, workflows) listed in a tool's schema; past this many the
# argument has no enum (any name is accepted) and its description lists the first ones.
LISTED_CHOICES = 100
DESCRIPTION_CHARS = 300  # of each choice's own description
SCHEMA_CHARS = 2000  # of each workflow's input schema, in start_workflow's description


# -- arguments ---------------------------------------------------------------------------


class Arguments(BaseModel):
    """A tool's arguments; an unknown one is refused, by its name."""

    model_config = ConfigDict(extra="forbid")


class RunAgentArguments(Arguments):
    agent_name: str = Field(description="The agent to run.")
    prompt: str = Field(min_length=1, description="The user message the agent answers.")
    thread_id: str = Field(
        default="",
        description="A thread to keep the conversation in (created if missing): the run "
        "reads its earlier messages and saves the new ones. Empty: a run without memory.",
    )


class QueryIndexArguments(Arguments):
    index_name: str = Field(description="The index to search.")
    query: str = Field(description="What to look for, in natural language.")
    top_k: int = Field(default=10, ge=1, le=100, description="How many results, best first.")


class AnswerFromIndexArguments(Arguments):
    index_name: str = Field(description="The index to answer from.")
    query: str = Field(description="The question.")
    top_k: int = Field(
        default=10, ge=1, le=100, description="How many passages to retrieve for the answer."
    )


class StartWorkflowArguments(Arguments):
    workflow_id: str = Field(description="The workflow to start.")
    input: dict[str, Any] = Field(
        default_factory=dict, description="The run's input: an object of the workflow's schema."
    )


class GetRunArguments(Arguments):
    run_id: str = Field(description="The run id that run_agent or start_workflow returned.")
    kind: Literal["agent", "workflow"] | None = Field(
        default=None, description="Whose run it is; omitted: looked up among both."
    )


# -- the tools -----------------------------------------------------------------------------


@dataclass
class ToolOutcome:
    """A tool's result; `failed`: the work it did (a run, an answer) failed, which the model
    is told with an error result."""

    result: BaseModel
    failed: bool = False


@dataclass(frozen=True)
class McpTool:
    """One tool: what the model sees of it and the call behind it."""

    name: str
    title: str
    description: str
    arguments: type[Arguments]
    result: type[BaseModel]
    call: Callable[[Any], Awaitable[ToolOutcome]]
    annotations: ToolAnnotations
    # A servicer's field name → the argument it comes from, where the two differ.
    argument_of: Mapping[str, str] = field(default_factory=dict)


def _choices(plural: str, items: list[tuple[str, str]], more: bool) -> tuple[list[str] | None, str]:
    """An argument's enum (None when there is nothing or too much to list) and what its
    description says of the choices."""
    if not items:
        return None, f" There are no {plural} yet."
    lines = "\n".join(f"- {name}: {text}" if text else f"- {name}" for name, text in items)
    if more:
        return None, f" Among others (any name is accepted):\n{lines}"
    return [name for name, _ in items], f" One of:\n{lines}"


class McpTools:
    """The tools of /mcp over the servicers of `runtime`, for the tenant of the call (the
    servicers read it, as they do on gRPC)."""

    def __init__(self, runtime: Runtime) -> None:
        # Each servicer call needs what the same RPC needs on gRPC (the access option).
        self.agents = guarded(AgentServicer(runtime), agent_service)
        self.rag = guarded(RagServicer(runtime), rag_service)
        self.workflows = guarded(WorkflowServicer(runtime), workflow_service)
        read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)
        acting = ToolAnnotations(read_only_hint=False, idempotent_hint=False)
        self.tools = {
            tool.name: tool
            for tool in (
                McpTool(
                    "run_agent",
                    "Run an agent",
                    "Run one of the agents on a prompt and return its answer. A run that needs "
                    "a person's approval for a tool stops WAITING; follow it with get_run.",
                    RunAgentArguments,
                    RunResult,
                    self.run_agent,
                    acting,
                ),
                McpTool(
                    "query_index",
                    "Search an index",
                    "Search a document index: the passages closest to the query, best first, "
                    "each with its document and score (0..1).",
                    QueryIndexArguments,
                    QueryResult,
                    self.query_index,
                    read_only,
                    {"retrieval.top_k": "top_k"},
                ),
                McpTool(
                    "answer_from_index",
                    "Answer from an index",
                    "Answer a question from a document index: the answer cites the passages "
                    "it uses with [n] markers, listed in citations.",
                    AnswerFromIndexArguments,
                    AnswerResult,
                    self.answer_from_index,
                    read_only,
                    {"retrieval.top_k": "top_k"},
                ),
                McpTool(
                    "start_workflow",
                    "Start a workflow",
                    "Start a run of a workflow on an input; it runs on durably. Follow it with "
                    "get_run.",
                    StartWorkflowArguments,
                    RunResult,
                    self.start_workflow,
                    acting,
                ),
                McpTool(
                    "get_run",
                    "Get a run",
                    "An agent run or a workflow run as it stands: status, then the answer or "
                    "output, or the error.",
                    GetRunArguments,
                    RunResult,
                    self.get_run,
                    read_only,
                ),
            )
        }

    # -- listing

    async def listing(self) -> list[Tool]:
        """The tools as the tenant of the call sees them: its agents, indexes and workflows
        listed in the arguments that choose one."""
        agents, indexes = await asyncio.gather(
            self.agents.ListAgents(
                agent_pb2.ListAgentsRequest(page_size=LISTED_CHOICES), NO_GRPC_CONTEXT
            ),
            self.rag.ListIndexes(
                rag_pb2.ListIndexesRequest(page_size=LISTED_CHOICES), NO_GRPC_CONTEXT
            ),
        )
        # Workflows are defined in code, the same for every tenant.
        workflows = [w.describe() for w in self.workflows.registry.newest()]
        agent_choices = _choices(
            "agents",
            [(a.name, a.description[:DESCRIPTION_CHARS]) for a in agents.agents],
            bool(agents.next_page_token),
        )
        index_choices = _choices(
            "indexes",
            [(i.name, i.description[:DESCRIPTION_CHARS]) for i in indexes.indexes],
            bool(indexes.next_page_token),
        )
        workflow_choices = _choices(
            "workflows",
            [(w.id, _workflow_text(w)) for w in workflows[:LISTED_CHOICES]],
            len(workflows) > LISTED_CHOICES,
        )
        chosen_by = {
            "run_agent": ("agent_name", agent_choices),
            "query_index": ("index_name", index_choices),
            "answer_from_index": ("index_name", index_choices),
            "start_workflow": ("workflow_id", workflow_choices),
        }
        listed = []
        for tool in self.tools.values():
            schema = tool.arguments.model_json_schema()
            if tool.name in chosen_by:
                argument, (enum, choices) = chosen_by[tool.name]
                spec = schema["properties"][argument]
                spec["description"] += choices
                if enum is not None:
                    spec["enum"] = enum
            listed.append(
                Tool(
                    name=tool.name,
                    title=tool.title,
                    description=tool.description,
                    input_schema=schema,
                    output_schema=tool.result.model_json_schema(),
                    annotations=tool.annotations,
                )
            )
        return listed

    # -- calls

    async def run_agent(self, args: RunAgentArguments) -> ToolOutcome:
        response = await self.agents.Generate(
            agent_pb2.GenerateRequest(
                agent_name=args.agent_name, prompt=args.prompt, thread_id=args.thread_id
            ),
            NO_GRPC_CONTEXT,
        )
        run = agent_run_result(response.run)
        return ToolOutcome(run, failed=run.status == "FAILED")

    async def query_index(self, args: QueryIndexArguments) -> ToolOutcome:
        response = await self.rag.Query(
            rag_pb2.QueryRequest(
                index_name=args.index_name,
                query=args.query,
                retrieval=rag_pb2.RetrievalOptions(top_k=args.top_k),
            ),
            NO_GRPC_CONTEXT,
        )
        return ToolOutcome(query_result(response))

    async def answer_from_index(self, args: AnswerFromIndexArguments) -> ToolOutcome:
        events = self.rag.Answer(
            rag_pb2.AnswerRequest(
                index_name=args.index_name,
                query=args.query,
                retrieval=rag_pb2.RetrievalOptions(top_k=args.top_k),
            ),
            NO_GRPC_CONTEXT,
        )
        answer_id, error = "", None
        async for response in events:
            event = response.event
            answer_id = event.answer_id
            if event.HasField("finished"):
                return ToolOutcome(answer_result(event.finished))
            if event.HasField("failed"):
                error = run_error_result(event.failed)
        answer = AnswerResult(
            answer_id=answer_id, status="FAILED", text="", citations=[], error=error
        )
        return ToolOutcome(answer, failed=True)

    async def start_workflow(self, args: StartWorkflowArguments) -> ToolOutcome:
        response = await self.workflows.StartRun(
            workflow_pb2.WorkflowServiceStartRunRequest(
                workflow_id=args.workflow_id, input=dict_to_struct(args.input)
            ),
            NO_GRPC_CONTEXT,
        )
        return ToolOutcome(workflow_run_result(response.run))

    async def get_run(self, args: GetRunArguments) -> ToolOutcome:
        lookups = [self._agent_run, self._workflow_run]
        if args.kind == "workflow" or (args.kind is None and args.run_id.startswith("wfr_")):
            lookups.reverse()
        if args.kind is not None:
            lookups = lookups[:1]
        for lookup in lookups[:-1]:
            try:
                return ToolOutcome(await lookup(args.run_id))
            except NotFound:
                pass  # not a run of this kind: the other kind's
        return ToolOutcome(await lookups[-1](args.run_id))

    async def _agent_run(self, run_id: str) -> RunResult:
        response = await self.agents.GetRun(
            agent_pb2.AgentServiceGetRunRequest(run_id=run_id), NO_GRPC_CONTEXT
        )
        return agent_run_result(response.run)

    async def _workflow_run(self, run_id: str) -> RunResult:
        response = await self.workflows.GetRun(
            workflow_pb2.WorkflowServiceGetRunRequest(run_id=run_id), NO_GRPC_CONTEXT
        )
        return workflow_run_result(response.run)


def _workflow_text(workflow: WorkflowInfo) -> str:
    """A workflow's description and its input schema, for the model that fills `input`."""
    schema = json.dumps(workflow.input_schema, separators=(",", ":"))
    if len(schema) > SCHEMA_CHARS:
        schema = "too long to list here: see WorkflowService.GetWorkflow"
    text = workflow.description[:DESCRIPTION_CHARS]
    return f"{text} Input schema: {schema}" if text else f"Input schema: {schema}"
