"""The price table: what a model's tokens cost, per million, from LOOMWORK_MODEL_PRICES.

    {"gpt-4o-mini": {"input": 0.15, "output": 0.60, "cached_input": 0.075}}

as JSON, or the path of a JSON file holding it. Prices are in whatever currency the
operator writes them in. Cached input tokens (a part of the input the model served from its
prompt cache) cost `cached_input`, or `input` when a model has none. A model the table does
not name has no price: its cost is unknown, never zero.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from loomwork.errors import FailedPrecondition
from loomwork.usage.setting_tables import parse_named_entries

SETTING = "LOOMWORK_MODEL_PRICES"
PER_TOKENS = 1_000_000


class ModelPrice(BaseModel):
    """A model's prices per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)


class PriceTable:
    """Prices by model name (exact names, as agents and answers name their model)."""

    def __init__(self, prices: dict[str, ModelPrice] | None = None) -> None:
        self.prices = dict(prices or {})

    @classmethod
    def parse(cls, spec: str) -> PriceTable:
        """The table from the setting's value: JSON, or the path of a JSON file; empty
        means no prices. A malformed table is a FailedPrecondition naming the setting."""
        text = spec.strip()
        if not text:
            return cls()
        if not text.startswith("{"):
            path = Path(text).expanduser()
            try:
                text = path.read_text()
            except OSError as exc:
                raise FailedPrecondition(f"{SETTING}: cannot read {path}: {exc}") from exc
        return cls(
            parse_named_entries(
                text,
                SETTING,
                ModelPrice,
                what="models",
                expected='{"input": <per 1M>, "output": <per 1M>, "cached_input": <optional>}',
            )
        )

    def price(self, model: str) -> ModelPrice | None:
        return self.prices.get(model)

    def columns(self) -> tuple[list[str], list[float], list[float], list[float | None]]:
        """The table as parallel lists (model, input, output, cached input), for SQL."""
        models = sorted(self.prices)
        return (
            models,
            [self.prices[m].input for m in models],
            [self.prices[m].output for m in models],
            [self.prices[m].cached_input for m in models],
        )
