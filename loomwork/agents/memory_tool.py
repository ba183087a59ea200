"""The built-in tool through which an agent keeps its working memory up to date."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from pydantic import BaseModel, Field

from loomwork.errors import FieldViolation, InvalidArgument
from loomwork.memory.models import RecallScope, WorkingMemory
from loomwork.memory.working import WorkingMemoryStore
from loomwork.tools import Tool, ToolContext

UPDATE_WORKING_MEMORY = "update_working_memory"


class UpdateWorkingMemoryArgs(BaseModel):
    markdown: str | None = Field(
        default=None, description="The whole new working memory, following its template"
    )
    data: dict[str, Any] | None = Field(
        default=None, description="The whole new working memory, following its JSON schema"
    )


def _check_against_schema(data: dict[str, Any] | None, schema: dict[str, Any]) -> None:
    """Structured working memory must follow the agent's JSON schema; the model is told
    which field is wrong (the error goes back to it as the tool's result)."""
    if data is None:
        raise InvalidArgument.field("data", "this agent keeps structured working memory: send data")
    errors = sorted(
        Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.absolute_path)
    )
    if errors:
        raise InvalidArgument(
            [
                FieldViolation(
                    ".".join(["data", *(str(p) for p in error.absolute_path)]), error.message
                )
                for error in errors
            ]
        )


def working_memory_tool(store: WorkingMemoryStore) -> Tool:
    async def update(args: UpdateWorkingMemoryArgs, ctx: ToolContext) -> dict[str, Any]:
        if args.markdown is None and args.data is None:
            raise InvalidArgument.field("markdown", "give markdown or data")
        if ctx.working_memory_schema is not None:
            _check_against_schema(args.data, ctx.working_memory_schema)
        scope = RecallScope(ctx.memory_scope)
        if scope is RecallScope.RESOURCE and not ctx.resource_id:
            scope = RecallScope.THREAD  # a thread without a resource keeps its own
        stored = await store.replace(
            ctx.tenant,
            WorkingMemory(
                scope=scope,
                thread_id=ctx.thread_id,
                resource_id=ctx.resource_id,
                markdown=args.markdown or "",
                data=args.data,
            ),
        )
        return {"updated": True, "scope": stored.scope.value}

    return Tool(
        UPDATE_WORKING_MEMORY,
        "Replace your working memory (persistent notes about the user and the conversation) "
        "with an updated version. Send the whole memory, not a diff.",
        UpdateWorkingMemoryArgs,
        update,
    )
