"""Usage and cost, assembled from settings: the ledger, its reports and the quota gate."""

from __future__ import annotations

from dataclasses import dataclass

from loomwork.storage.database import Database
from loomwork.usage.ledger import UsageLedger
from loomwork.usage.prices import PriceTable
from loomwork.usage.quotas import QuotaGate, QuotaTable
from loomwork.usage.report import UsageReports
from loomwork.usage.slots import RunSlots


@dataclass
class UsageSystem:
    ledger: UsageLedger
    reports: UsageReports
    quotas: QuotaGate

    @classmethod
    def build(cls, db: Database, *, prices: str = "", quotas: str = "") -> UsageSystem:
        """Over `db`, with the price table and quotas of the settings' values
        (LOOMWORK_MODEL_PRICES, LOOMWORK_QUOTAS); FailedPrecondition if either is malformed."""
        ledger = UsageLedger(db)
        return cls(
            ledger=ledger,
            reports=UsageReports(db, PriceTable.parse(prices)),
            quotas=QuotaGate(QuotaTable.parse(quotas), ledger, RunSlots(db)),
        )
