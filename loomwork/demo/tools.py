"""The demo tools: small tools the demo agent and the example workflows use.

Registered only in demo mode. `send_email` sends nothing: it stands in for an outbound
integration that needs a person's approval, and says so in its description.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from loomwork.storage.database import Database
from loomwork.tools import Tool, ToolContext


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
    """Pretend to send: a stand-in for an outbound integration that needs approval first."""
    return {"sent": True, "to": args.to, "subject": args.subject}


SEND_EMAIL_DESCRIPTION = (
    "Demo tool: pretends to send an email and sends nothing (a person approves each call "
    "first, as a real outbound integration would need)."
)


def demo_tools(db: Database) -> list[Tool]:
    """The demo tools: `add`, `word_count`, `send_email` (sends nothing), `save_note`."""
    return [
        Tool("add", "Add numbers exactly.", AddArgs, add),
        Tool("word_count", "Count the words of a text.", WordCountArgs, word_count),
        Tool(
            "send_email",
            SEND_EMAIL_DESCRIPTION,
            SendEmailArgs,
            send_email,
            requires_approval=True,
        ),
        Tool("save_note", "Save a note for the user.", SaveNoteArgs, NoteTool(db).save),
    ]
