"""Settings that are JSON objects of named entries (prices by model, quotas by tenant)."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from loomwork.errors import FailedPrecondition

Entry = TypeVar("Entry", bound=BaseModel)


def parse_named_entries(
    text: str, setting: str, entry: type[Entry], *, what: str, expected: str
) -> dict[str, Entry]:
    """`{"<name>": {...}, ...}` with each entry validated as `entry`; a FailedPrecondition
    naming the setting, the entry and what is wrong (`expected`: the entry's shape)."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise FailedPrecondition(f"{setting}: not JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise FailedPrecondition(f"{setting}: expected a JSON object of {what}")
    entries: dict[str, Entry] = {}
    for name, value in raw.items():
        try:
            entries[name] = entry.model_validate(value)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors()
            )
            raise FailedPrecondition(f"{setting}: {name!r}: {problems} ({expected})") from exc
    return entries
