"""Update rejections the workflows raise from their validators: the `type` names the domain
error (InvalidArgument, FailedPrecondition), the details hold one (field, description) each,
so the services map them as they map their own errors."""

from __future__ import annotations

from collections.abc import Callable

from temporalio.exceptions import ApplicationError


def rejected(error_type: str, violations: list[tuple[str, str]], message: str) -> ApplicationError:
    """An Update rejection of `error_type`, naming each (field, description)."""
    return ApplicationError(
        message, *[{"field": f, "description": d} for f, d in violations], type=error_type
    )


def _rejected_field(error_type: str, field: str, description: str) -> ApplicationError:
    return rejected(error_type, [(field, description)], f"{field}: {description}")


def check_call_ids(
    field: str,
    call_ids: list[str],
    waiting: Callable[[str], bool],
    *,
    what: str,
    twice: str,
    not_waiting: str,
) -> None:
    """An Update's check of the tool calls it answers (`field[i].tool_call_id`): at least
    one, none twice, each one `waiting`."""
    if not call_ids:
        raise _rejected_field("InvalidArgument", field, f"give at least one {what}")
    seen: set[str] = set()
    for i, call_id in enumerate(call_ids):
        at = f"{field}[{i}].tool_call_id"
        if call_id in seen:
            raise _rejected_field("InvalidArgument", at, f"{call_id!r} {twice}")
        seen.add(call_id)
        if not waiting(call_id):
            raise _rejected_field("FailedPrecondition", at, f"{call_id!r} {not_waiting}")
