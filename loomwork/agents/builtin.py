"""The agents and tools that ship with Loomwork (used by the demo and the tests)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from loomwork.agents.definitions import AgentDefinition, AgentRegistry
from loomwork.agents.memory_tool import working_memory_tool
from loomwork.agents.tools import Tool, ToolContext, ToolRegistry
from loomwork.memory.working import WorkingMemoryStore
from loomwork.storage.database import Database


class AddArgs(BaseModel):
    numbers: list[float] = Field(description="The numbers to add", min_length=1)


async def add(args: AddArgs, ctx: ToolContext) -> dict[str, float]:
    return {"sum": sum(args.numbers)}


class WordCountArgs(BaseModel):
    text: str = Field(description="The text whose words to count")


async def word_count(args: WordCountArgs, ctx: ToolContext) -> dict[str, int]:
    return {"words": len(args.text.split())}


class SaveNoteArgs(BaseModel):
    title: str = Field(description="A short title", min_length=1, max_length=200)
    body: str = Field(description="The note itself", max_length=20_000)


class NoteTool:
    """Stores a note in Postgres exactly once per tool call, however often it is retried."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def save(self, args: SaveNoteArgs, ctx: ToolContext) -> dict[str, object]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                """
                insert into notes (tenant_id, idempotency_key, thread_id, title, body)
                values (%s, %s, %s, %s, %s)
                on conflict (tenant_id, idempotency_key) do update set title = notes.title
                returning id
                """,
                (ctx.tenant, ctx.idempotency_key, ctx.thread_id, args.title, args.body),
            )
            row = await cur.fetchone()
        assert row is not None
        return {"note_id": row["id"], "saved": True}


class SendEmailArgs(BaseModel):
    to: str = Field(description="Recipient address", pattern=r"^[^@\s]+@[^@\s]+$")
    subject: str = Field(max_length=200)
    body: str = Field(max_length=20_000)


async def send_email(args: SendEmailArgs, ctx: ToolContext) -> dict[str, object]:
    # A stand-in for an outbound integration: it needs a person's approval first.
    return {"sent": True, "to": args.to, "subject": args.subject}


def builtin_tools(db: Database | None = None) -> ToolRegistry:
    tools = [
        Tool("add", "Add numbers exactly.", AddArgs, add),
        Tool("word_count", "Count the words of a text.", WordCountArgs, word_count),
        Tool(
            "send_email",
            "Send an email (a person approves each one first).",
            SendEmailArgs,
            send_email,
            requires_approval=True,
        ),
    ]
    if db is not None:
        tools.append(
            Tool("save_note", "Save a note for the user.", SaveNoteArgs, NoteTool(db).save)
        )
        tools.append(working_memory_tool(WorkingMemoryStore(db)))
    return ToolRegistry(tools)


def builtin_agents() -> AgentRegistry:
    return AgentRegistry(
        [
            AgentDefinition(
                name="assistant",
                description="A helpful assistant that adds numbers, counts words, saves notes.",
                instructions=(
                    "You are a concise, helpful assistant. Use the tools for arithmetic "
                    "and counting instead of guessing."
                ),
                tool_names=["add", "word_count", "save_note", "send_email"],
            )
        ]
    )
