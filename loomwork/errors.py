"""The one family of domain errors; `server/transport/errors.py` maps each to a gRPC status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: `field` is a path such as `messages[2].role`."""

    field: str
    description: str


class LoomworkError(Exception):
    """Base of every error the domain raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(LoomworkError):
    """The request is malformed; `violations` name the offending fields."""

    def __init__(self, violations: list[FieldViolation], message: str | None = None) -> None:
        if not violations:
            raise ValueError("InvalidArgument needs at least one violation")
        self.violations = list(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(message or f"invalid argument: {summary}")

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class NotFound(LoomworkError):
    """The named resource does not exist for this tenant."""


class AlreadyExists(LoomworkError):
    """A resource with the client-chosen id exists already."""


class FailedPrecondition(LoomworkError):
    """The system is not in a state that allows the operation."""


class Aborted(LoomworkError):
    """A concurrent change won (an etag no longer matches): read again, then retry."""


class PermissionDenied(LoomworkError):
    """The caller is known but may not do this."""


class Unauthenticated(LoomworkError):
    """The caller did not present a valid token."""


class ResourceExhausted(LoomworkError):
    """A quota or limit was hit."""


class OutOfRange(LoomworkError):
    """A position (an event id, an offset) lies beyond what exists."""


class DeadlineExceeded(LoomworkError):
    """Waiting for something took longer than allowed."""


class Unavailable(LoomworkError):
    """A dependency (database, cache, Temporal, model) cannot be reached right now."""


def rejection_error(error_type: str | None, message: str, details: Sequence[Any]) -> LoomworkError:
    """The domain error a workflow's Update validator rejected a request with: its type names
    the error (InvalidArgument, with `{"field", "description"}` objects as details; anything
    else is FailedPrecondition)."""
    violations = [
        FieldViolation(str(d.get("field", "")), str(d.get("description", "")))
        for d in details
        if isinstance(d, dict)
    ]
    if error_type == "InvalidArgument" and violations:
        return InvalidArgument(violations, message)
    return FailedPrecondition(message)


class Violations:
    """Collects field violations and raises them together."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


class QuotaExceeded(ResourceExhausted):
    """A tenant's quota stops a run from starting: which quota, its limit, what is used, and
    when it resets (None: when one of the runs under way ends)."""

    def __init__(
        self,
        message: str,
        *,
        quota: str,
        tenant: str,
        limit: int,
        used: int,
        reset_time: datetime | None,
    ) -> None:
        super().__init__(message)
        self.quota = quota
        self.tenant = tenant
        self.limit = limit
        self.used = used
        self.reset_time = reset_time
