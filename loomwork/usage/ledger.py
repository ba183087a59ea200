"""The usage ledger: each model call's tokens, one row per call of a run.

The activity that made the call writes its row. A call's key names the call (`step:3` of
an agent run, `answer` of a RAG answer), never the attempt, so a step Temporal retries
writes the same row again: the newest attempt's figures, which are the ones its run
reports, and an older attempt that ends late never overwrites them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from loomwork.llm.chat import ChatUsage
from loomwork.storage.database import Database

# `agent`: agent runs (those a workflow's agent step or a sub-agent starts among them);
# `answer`: RAG answers.
RunKind = Literal["agent", "answer"]


def step_call(step: int) -> str:
    """The call key of an agent run's model step."""
    return f"step:{step}"


class ModelCall(BaseModel):
    """The tokens of one model call of a run, as the ledger keeps them."""

    tenant: str
    run_id: str
    call_key: str
    run_kind: RunKind
    agent_name: str = ""
    model: str
    usage: ChatUsage
    attempt: int = 1


class UsageLedger:
    """Model tokens in PostgreSQL (table `model_usage`, migration 0011)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, call: ModelCall) -> None:
        """Write the call's row, or rewrite it with a newer attempt's figures."""
        usage = call.usage
        async with self.db.connection() as conn:
            await conn.execute(
                """
                insert into model_usage as u (tenant_id, run_id, call_key, run_kind, agent_name,
                    model, input_tokens, cached_tokens, output_tokens, attempt)
                values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                on conflict (tenant_id, run_id, call_key) do update set
                    model = excluded.model, input_tokens = excluded.input_tokens,
                    cached_tokens = excluded.cached_tokens,
                    output_tokens = excluded.output_tokens, attempt = excluded.attempt
                where u.attempt <= excluded.attempt
                """,
                (
                    call.tenant,
                    call.run_id,
                    call.call_key,
                    call.run_kind,
                    call.agent_name,
                    call.model,
                    usage.prompt_tokens,
                    min(usage.cached_tokens, usage.prompt_tokens),
                    usage.completion_tokens,
                    call.attempt,
                ),
            )

    async def tokens_since(self, tenant: str, since: datetime) -> int:
        """Input plus output tokens of the tenant's model calls since `since`."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "select coalesce(sum(input_tokens + output_tokens), 0)::bigint as tokens"
                " from model_usage where tenant_id = %s and create_time >= %s",
                (tenant, since),
            )
            row = await cur.fetchone()
        return int(row["tokens"]) if row is not None else 0
