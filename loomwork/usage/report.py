"""Usage and cost of a tenant over a time range, in rows grouped by day (UTC), agent, model
and/or run, each priced with the current price table, and paged by the rows' keys."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from loomwork.errors import InvalidArgument
from loomwork.paging import decode_text_token, encode_text_token
from loomwork.storage.database import Database
from loomwork.usage.prices import PER_TOKENS, PriceTable

Dimension = Literal["day", "agent", "model", "run"]
# The columns each dimension groups by; rows come in the order of _EXPRESSIONS.
_COLUMNS: dict[Dimension, tuple[str, ...]] = {
    "day": ("day",),
    "agent": ("run_kind", "agent_name"),
    "model": ("model",),
    "run": ("run_kind", "run_id"),
}
_EXPRESSIONS = {
    "day": "(u.create_time at time zone 'UTC')::date",
    "run_kind": "u.run_kind",
    "agent_name": "u.agent_name",
    "model": "u.model",
    "run_id": "u.run_id",
}
DEFAULT_GROUPING: tuple[Dimension, ...] = ("day", "agent", "model")
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class UsageQuery(BaseModel):
    """Which usage to report: a time range [start, end), grouping and filters."""

    start_time: datetime
    end_time: datetime | None = None  # None: now (a page token keeps its first page's now)
    group_by: list[Dimension] = Field(default_factory=lambda: list(DEFAULT_GROUPING))
    agent_name: str = ""
    model: str = ""
    run_id: str = ""
    page_size: int = 0
    page_token: str = ""


class UsageRow(BaseModel):
    """Tokens and cost of one group (a field of a dimension not grouped by stays empty).
    `cost` is None when a model of the group has no price (`unpriced_models` names them)."""

    day: date | None = None
    run_kind: str = ""
    agent_name: str = ""
    model: str = ""
    run_id: str = ""
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    model_calls: int = 0
    runs: int = 0
    cost: float | None = None
    unpriced_models: list[str] = Field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class UsagePage(BaseModel):
    rows: list[UsageRow]
    total: UsageRow  # over the whole range and filters, every page
    next_page_token: str = ""


def _grouping(query: UsageQuery) -> list[str]:
    """The columns the query groups by, in the order rows come in."""
    wanted = {c for d in (query.group_by or DEFAULT_GROUPING) for c in _COLUMNS[d]}
    return [c for c in _EXPRESSIONS if c in wanted]


def _key(row: dict[str, Any], columns: list[str]) -> list[str]:
    return [row[c].isoformat() if c == "day" else row[c] for c in columns]


class UsageReports:
    """Reads the usage ledger (`model_usage`) as reports."""

    def __init__(self, db: Database, prices: PriceTable) -> None:
        self.db = db
        self.prices = prices

    async def report(self, tenant: str, query: UsageQuery) -> UsagePage:
        size = query.page_size or DEFAULT_PAGE_SIZE
        if not 0 < size <= MAX_PAGE_SIZE:
            raise InvalidArgument.field("page_size", f"must be 0..{MAX_PAGE_SIZE}")
        columns = _grouping(query)
        scope = json.dumps(
            [tenant, query.model_dump(mode="json", exclude={"page_size", "page_token"})]
        )
        cursor = decode_text_token(query.page_token, scope)
        after: list[str] | None = None
        end = query.end_time or datetime.now(UTC)
        if cursor:  # the last group of the previous page, and the end that page resolved
            position = json.loads(cursor)
            after, end = position["after"], datetime.fromisoformat(position["end"])
        if end <= query.start_time:
            raise InvalidArgument.field("end_time", "must be after start_time")
        clauses = ["u.tenant_id = %s", "u.create_time >= %s", "u.create_time < %s"]
        params: list[Any] = [tenant, query.start_time, end]
        for column, value in (
            ("agent_name", query.agent_name),
            ("model", query.model),
            ("run_id", query.run_id),
        ):
            if value:
                clauses.append(f"u.{column} = %s")
                params.append(value)
        models, inputs, outputs, cached = self.prices.columns()
        price_params: list[Any] = [models, inputs, outputs, cached]
        selected = ", ".join(f"{_EXPRESSIONS[c]} as {c}" for c in columns)
        totals = f"""
            select sum(u.input_tokens)::bigint as input_tokens,
                sum(u.cached_tokens)::bigint as cached_tokens,
                sum(u.output_tokens)::bigint as output_tokens,
                count(*)::bigint as model_calls,
                count(distinct u.run_id)::bigint as runs,
                sum(((u.input_tokens - u.cached_tokens) * p.input
                    + u.cached_tokens * coalesce(p.cached, p.input)
                    + u.output_tokens * p.output) / {PER_TOKENS})::float8 as cost,
                array_agg(distinct u.model order by u.model)
                    filter (where p.model is null) as unpriced_models
            from model_usage u
            left join unnest(%s::text[], %s::float8[], %s::float8[], %s::float8[])
                as p(model, input, output, cached) on p.model = u.model
            where {" and ".join(clauses)}
        """
        grouped = totals.replace("select ", f"select {selected}, ", 1)
        grouped += f" group by {', '.join(_EXPRESSIONS[c] for c in columns)}"
        page_sql = f"select * from ({grouped}) g"
        page_params = [*price_params, *params]
        if after is not None:
            if len(after) != len(columns):
                raise InvalidArgument.field("page_token", "belongs to a different query")
            placeholders = ", ".join("%s::date" if c == "day" else "%s" for c in columns)
            page_sql += f" where ({', '.join(columns)}) > ({placeholders})"
            page_params += after
        page_sql += f" order by {', '.join(columns)} limit %s"
        page_params.append(size + 1)
        async with self.db.connection() as conn:
            cur = await conn.execute(page_sql.encode(), page_params)
            rows = await cur.fetchall()
            cur = await conn.execute(totals.encode(), [*price_params, *params])
            total = await cur.fetchone()
        next_token = ""
        if len(rows) > size:
            rows = rows[:size]
            position = {"after": _key(rows[-1], columns), "end": end.isoformat()}
            next_token = encode_text_token(json.dumps(position), scope)
        return UsagePage(
            rows=[_row(r) for r in rows],
            total=_row(total) if total is not None else UsageRow(cost=0.0),
            next_page_token=next_token,
        )


def _row(row: dict[str, Any]) -> UsageRow:
    unpriced = list(row["unpriced_models"] or [])
    fields = {k: v for k, v in row.items() if k in UsageRow.model_fields and v is not None}
    fields["unpriced_models"] = unpriced
    fields["cost"] = None if unpriced else float(row["cost"] or 0.0)
    return UsageRow.model_validate(fields)
