"""What usage and quotas add, each against a bare Postgres round trip of the same pool,
measured in the same run.

    .venv/bin/python bench/usage.py [--calls 2000] [--rows 100000]

- record: a model step writing its row (`UsageLedger.record`, an upsert) over a bare
  one-row insert (both wait for the disk): what each model step pays.  goal ≤ 1.3×
- tokens quota: `QuotaGate.admit` with a tokens_per_day limit, the tenant having a day's
  share of `--rows` calls today (its sum), over `select 1`.            goal ≤ 4×
- runs quota: `QuotaGate.admit` with a concurrent_runs limit (a slot taken in a
  transaction under an advisory lock) over an empty transaction.      goal ≤ 4×
- report: ListUsage's query (`UsageReports.report`, 30 days by day, agent and model, priced)
  over `--rows` calls, against the same grouping without prices or paging, raw.

Starts embedded Postgres in a temporary home unless DATABASE_URL is set.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from timing import paired_us

from loomwork.llm.chat import ChatUsage
from loomwork.storage.database import Database
from loomwork.storage.migrations import apply_migrations
from loomwork.usage.ledger import ModelCall
from loomwork.usage.report import UsageQuery
from loomwork.usage.system import UsageSystem
from server.embedded import EmbeddedStack

TENANT = "bench-usage"
PRICES = '{"model-0": {"input": 2, "output": 8}, "model-1": {"input": 0.15, "output": 0.6}}'


async def _seed(db: Database, rows: int) -> None:
    """`rows` model calls of the tenant over the last 30 days: 20 agents, 5 models."""
    async with db.connection() as conn:
        await conn.execute("delete from model_usage where tenant_id = %s", (TENANT,))
        await conn.execute(
            """
            insert into model_usage (tenant_id, run_id, call_key, run_kind, agent_name, model,
                input_tokens, cached_tokens, output_tokens, create_time)
            select %s, 'run-' || (i / 4), 'step:' || (i %% 4), 'agent', 'agent-' || (i %% 20),
                'model-' || (i %% 5), 500 + i %% 700, i %% 100, 50 + i %% 300,
                now() - (i * interval '30 days' / %s)
            from generate_series(0, %s - 1) as i
            """,
            (TENANT, rows, rows),
        )
        await conn.execute("vacuum analyze model_usage")


async def _median_ms(fn: Callable[[], Awaitable[object]], times: int) -> float:
    spent = []
    for _ in range(times):
        started = time.perf_counter()
        await fn()
        spent.append((time.perf_counter() - started) * 1000)
    return statistics.median(spent)


async def run(database_url: str, calls: int, rows: int) -> None:
    db = Database(database_url)
    await db.open()
    await apply_migrations(db)
    await _seed(db, rows)

    async def round_trip() -> None:
        async with db.connection() as conn:
            await conn.execute("select 1")

    async with db.connection() as conn:
        await conn.execute("create table if not exists bench_usage_probe (n bigint)")
    probes = itertools.count()

    async def durable_insert() -> None:
        async with db.connection() as conn:
            await conn.execute("insert into bench_usage_probe values (%s)", (next(probes),))

    async def empty_transaction() -> None:
        async with db.connection() as conn, conn.transaction():
            await conn.execute("select 1")

    plain = UsageSystem.build(db, prices=PRICES)
    counter = itertools.count()

    async def record() -> None:
        await plain.ledger.record(
            ModelCall(
                tenant="bench-record",
                run_id=f"run-{next(counter)}",
                call_key="step:1",
                run_kind="agent",
                agent_name="a",
                model="model-0",
                usage=ChatUsage(prompt_tokens=900, completion_tokens=120, total_tokens=1020),
            )
        )

    tokens_only = UsageSystem.build(db, quotas=f'{{"{TENANT}": {{"tokens_per_day": 1000000000}}}}')
    runs_only = UsageSystem.build(db, quotas=f'{{"{TENANT}": {{"concurrent_runs": 1000000000}}}}')

    async def still_open(_: str) -> bool:
        return True

    async def admit_tokens() -> None:
        await tokens_only.quotas.admit(TENANT, "wf", still_open)

    async def admit_run() -> None:
        await runs_only.quotas.admit(TENANT, f"agent/a/bench/{next(counter)}", still_open)

    ours, base, record_ratio = await paired_us(record, durable_insert, calls)
    tok, tok_base, tokens_ratio = await paired_us(admit_tokens, round_trip, calls // 4)
    slot, slot_base, runs_ratio = await paired_us(admit_run, empty_transaction, calls)
    async with db.connection() as conn:
        await conn.execute("drop table bench_usage_probe")
        await conn.execute("delete from run_slots where tenant_id = %s", (TENANT,))

    query = UsageQuery(
        start_time=datetime.now(UTC) - timedelta(days=31), group_by=["day", "agent", "model"]
    )

    async def report() -> None:
        page = await plain.reports.report(TENANT, query.model_copy())
        assert page.total.model_calls == rows

    async def raw_report() -> None:
        async with db.connection() as conn:
            cur = await conn.execute(
                "select (create_time at time zone 'UTC')::date, run_kind, agent_name, model,"
                " sum(input_tokens), sum(cached_tokens), sum(output_tokens), count(*)"
                " from model_usage where tenant_id = %s and create_time >= %s"
                " group by 1, 2, 3, 4 order by 1, 2, 3, 4",
                (TENANT, query.start_time),
            )
            await cur.fetchall()

    report_ms = await _median_ms(report, 7)
    raw_ms = await _median_ms(raw_report, 7)

    print(f"usage and quotas, {calls} sequential calls, 20 alternating rounds (medians)")
    print(
        f"  record a step's usage   {ours:8.1f} µs   insert   {base:8.1f} µs"
        f"   ratio {record_ratio:5.2f}×  (goal ≤ 1.3×)"
    )
    print(
        f"  tokens_per_day check    {tok:8.1f} µs   select 1 {tok_base:8.1f} µs"
        f"   ratio {tokens_ratio:5.2f}×  (goal ≤ 4×; {rows // 30} calls today)"
    )
    print(
        f"  concurrent_runs slot    {slot:8.1f} µs   empty tx {slot_base:8.1f} µs"
        f"   ratio {runs_ratio:5.2f}×  (goal ≤ 4×)"
    )
    print(
        f"  ListUsage query         {report_ms:8.1f} ms   raw grouping {raw_ms:8.1f} ms"
        f"   ratio {report_ms / raw_ms:5.2f}×  ({rows} calls over 30 days, page + total)"
    )
    await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
        stack = EmbeddedStack(
            Path(tmp), postgres=not os.environ.get("DATABASE_URL"), redis=False, temporal=False
        )
        endpoints = stack.start()
        try:
            asyncio.run(
                run(
                    os.environ.get("DATABASE_URL") or endpoints.database_url or "",
                    args.calls,
                    args.rows,
                )
            )
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
