"""Per-tenant quotas, checked as a run starts: model tokens per day (UTC) and runs under way
at once. LOOMWORK_QUOTAS holds them as JSON, a `default` for every tenant and entries per
tenant whose fields replace the default's (null: no limit):

    {"default": {"tokens_per_day": 1000000, "concurrent_runs": 20},
     "acme": {"tokens_per_day": 5000000}, "internal": {"concurrent_runs": null}}
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from pydantic import BaseModel, ConfigDict, Field

from loomwork.errors import QuotaExceeded
from loomwork.usage.ledger import UsageLedger
from loomwork.usage.setting_tables import parse_named_entries
from loomwork.usage.slots import RunSlots, StillOpen

SETTING = "LOOMWORK_QUOTAS"
TOKENS_PER_DAY = "tokens_per_day"
CONCURRENT_RUNS = "concurrent_runs"


class Quota(BaseModel):
    """A tenant's limits; None: no limit."""

    model_config = ConfigDict(extra="forbid")

    tokens_per_day: int | None = Field(default=None, ge=1)
    concurrent_runs: int | None = Field(default=None, ge=1)


class QuotaTable:
    """The quotas of every tenant: its own entry over the default."""

    def __init__(self, default: Quota | None = None, tenants: dict[str, Quota] | None = None):
        self.default = default or Quota()
        self.tenants = dict(tenants or {})

    @classmethod
    def parse(cls, spec: str) -> QuotaTable:
        """The table from the setting's JSON (empty: no quotas); a malformed one is a
        FailedPrecondition naming the setting."""
        if not spec.strip():
            return cls()
        quotas = parse_named_entries(
            spec,
            SETTING,
            Quota,
            what="tenants",
            expected=f"fields: {TOKENS_PER_DAY}, {CONCURRENT_RUNS}",
        )
        default = quotas.pop("default", None)
        return cls(default, quotas)

    def of(self, tenant: str) -> Quota:
        own = self.tenants.get(tenant)
        if own is None:
            return self.default
        return self.default.model_copy(update={f: getattr(own, f) for f in own.model_fields_set})

    @property
    def any(self) -> bool:
        """Whether any tenant has a limit (else starts check nothing)."""
        return any(
            q.tokens_per_day is not None or q.concurrent_runs is not None
            for q in (self.default, *self.tenants.values())
        )


def day_start(now: datetime) -> datetime:
    """Midnight (UTC) of `now`'s day: when the day's token count began."""
    return datetime.combine(now.astimezone(UTC).date(), time(), tzinfo=UTC)


class QuotaStatus(BaseModel):
    """A tenant's quota and what it uses of it now."""

    tenant: str
    quota: Quota
    tokens_used_today: int
    tokens_reset_time: datetime
    runs_under_way: int


class QuotaGate:
    """Admits a run as it starts, or refuses it with QuotaExceeded naming the quota."""

    def __init__(self, table: QuotaTable, ledger: UsageLedger, slots: RunSlots) -> None:
        self.table = table
        self.ledger = ledger
        self.slots = slots

    async def admit(self, tenant: str, workflow_id: str, still_open: StillOpen) -> bool:
        """Check the tenant's quotas for a run about to start as `workflow_id`; True when the
        run took a concurrent-run slot (give it back with `refused` if the start fails)."""
        quota = self.table.of(tenant)
        if quota.tokens_per_day is not None:
            now = datetime.now(UTC)
            used = await self.ledger.tokens_since(tenant, day_start(now))
            if used >= quota.tokens_per_day:
                resets = day_start(now) + timedelta(days=1)
                raise QuotaExceeded(
                    f"quota {TOKENS_PER_DAY} of tenant {tenant!r} is used up: {used} of "
                    f"{quota.tokens_per_day} model tokens today (UTC); it resets at "
                    f"{resets.isoformat().replace('+00:00', 'Z')}",
                    quota=TOKENS_PER_DAY,
                    tenant=tenant,
                    limit=quota.tokens_per_day,
                    used=used,
                    reset_time=resets,
                )
        if quota.concurrent_runs is None:
            return False
        running = await self.slots.claim(tenant, workflow_id, quota.concurrent_runs, still_open)
        if running:
            raise QuotaExceeded(
                f"quota {CONCURRENT_RUNS} of tenant {tenant!r} is reached: {running} of "
                f"{quota.concurrent_runs} runs under way; it frees as one of them ends",
                quota=CONCURRENT_RUNS,
                tenant=tenant,
                limit=quota.concurrent_runs,
                used=running,
                reset_time=None,
            )
        return True

    async def refused(self, tenant: str, workflow_id: str) -> None:
        """The run admitted as `workflow_id` did not start: its slot is free again."""
        await self.slots.release(tenant, workflow_id)

    async def status(self, tenant: str, still_open: StillOpen) -> QuotaStatus:
        """The tenant's quota, today's tokens and its runs under way (with a run limit)."""
        quota = self.table.of(tenant)
        today = day_start(datetime.now(UTC))
        return QuotaStatus(
            tenant=tenant,
            quota=quota,
            tokens_used_today=await self.ledger.tokens_since(tenant, today),
            tokens_reset_time=today + timedelta(days=1),
            runs_under_way=(
                await self.slots.under_way(tenant, still_open)
                if quota.concurrent_runs is not None
                else 0
            ),
        )
