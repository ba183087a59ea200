"""Routing rules: a webhook event becomes one typed action, carried out through `RouteTargets`.

Rules are tried in order; the first whose event type matches decides. Values are read from
the event's JSON body by dotted paths (`data.run_id`, `data.items.0.id`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, Field, ValidationError

from loomwork.agents.run_models import Decision
from loomwork.errors import (
    InvalidArgument,
    LoomworkError,
    Unavailable,
    Violations,
)

MAX_ROUTES = 50


class ResumeAgentApprovalRule(BaseModel):
    kind: Literal["resume_agent_approval"] = "resume_agent_approval"
    run_id_path: str = "data.run_id"
    decisions_path: str = "data.decisions"


class ResumeWorkflowStepRule(BaseModel):
    kind: Literal["resume_workflow_step"] = "resume_workflow_step"
    run_id_path: str = "data.run_id"
    step_id_path: str = "data.step_id"
    resume_data_path: str = "data.resume_data"


class StartWorkflowRule(BaseModel):
    kind: Literal["start_workflow"] = "start_workflow"
    workflow_name: str
    input_path: str = "data"


class IngestDocumentRule(BaseModel):
    kind: Literal["ingest_document"] = "ingest_document"
    collection_id: str
    text_path: str = "data.text"
    document_id_path: str = "data.id"


RuleAction = Annotated[
    ResumeAgentApprovalRule | ResumeWorkflowStepRule | StartWorkflowRule | IngestDocumentRule,
    Field(discriminator="kind"),
]


class Route(BaseModel):
    """One rule: events of `event_type` (exact, `prefix.*` or `*`) become `action`."""

    name: str
    event_type: str
    action: RuleAction

    def matches(self, event_type: str) -> bool:
        if self.event_type == "*":
            return True
        if self.event_type.endswith("*"):
            return event_type.startswith(self.event_type[:-1])
        return event_type == self.event_type


def check_routes(routes: list[Route], field: str = "routes") -> None:
    """InvalidArgument naming the first bad rule field."""
    violations = Violations()
    if len(routes) > MAX_ROUTES:
        violations.add(field, f"at most {MAX_ROUTES} routes")
    names: set[str] = set()
    for i, route in enumerate(routes):
        at = f"{field}[{i}]"
        if not 1 <= len(route.name) <= 64:
            violations.add(f"{at}.name", "must be 1..64 characters")
        elif route.name in names:
            violations.add(f"{at}.name", f"{route.name!r} is used twice")
        names.add(route.name)
        if not route.event_type or "*" in route.event_type[:-1]:
            violations.add(f"{at}.event_type", "must be a type, a prefix ending in *, or *")
        action = route.action
        if isinstance(action, StartWorkflowRule) and not action.workflow_name:
            violations.add(f"{at}.start_workflow.workflow_name", "is required")
        if isinstance(action, IngestDocumentRule) and not action.collection_id:
            violations.add(f"{at}.ingest_document.collection_id", "is required")
    violations.raise_if_any()


class WebhookEvent(BaseModel):
    """An accepted delivery, parsed: who sent it, its type and its JSON body."""

    tenant: str
    source_id: str
    delivery_id: str
    event_type: str
    payload: dict[str, Any]


# -- typed actions, resolved from a rule and an event


class AgentApprovalResume(BaseModel):
    kind: Literal["agent_approval"] = "agent_approval"
    run_id: str
    decisions: list[Decision]
    # The same delivery routed again (a retried activity) applies its decisions once.
    idempotency_key: str


class WorkflowStepResume(BaseModel):
    kind: Literal["workflow_step"] = "workflow_step"
    run_id: str
    step_id: str
    resume_data: dict[str, Any]
    idempotency_key: str


class WorkflowStart(BaseModel):
    kind: Literal["workflow_start"] = "workflow_start"
    workflow_name: str
    input: dict[str, Any]
    # One run per delivery: a retried routing starts nothing twice.
    idempotency_key: str


class DocumentIngest(BaseModel):
    kind: Literal["document_ingest"] = "document_ingest"
    collection_id: str
    document_id: str
    text: str
    idempotency_key: str


Action = AgentApprovalResume | WorkflowStepResume | WorkflowStart | DocumentIngest


class RouteTargets(Protocol):
    """Where actions land; the server wires real implementations (Temporal, RAG)."""

    async def resume_agent_approval(self, tenant: str, action: AgentApprovalResume) -> str: ...

    async def resume_workflow_step(self, tenant: str, action: WorkflowStepResume) -> str: ...

    async def start_workflow(self, tenant: str, action: WorkflowStart) -> str: ...

    async def ingest_document(self, tenant: str, action: DocumentIngest) -> str: ...


_MISSING = object()


def lookup(payload: Any, path: str) -> Any:
    """The value at a dotted path (`data.items.0.id`); `_MISSING` when absent."""
    value = payload
    for part in path.split(".") if path else []:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _string(payload: dict[str, Any], path: str) -> str:
    value = lookup(payload, path)
    if not isinstance(value, str) or not value:
        raise InvalidArgument.field(f"payload.{path}", "must be a non-empty string")
    return value


def _object(payload: dict[str, Any], path: str, *, required: bool = True) -> dict[str, Any]:
    value = lookup(payload, path)
    if value is _MISSING and not required:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument.field(f"payload.{path}", "must be an object")
    return value


def resolve(rule: RuleAction, event: WebhookEvent) -> Action:
    """The typed action a rule makes of an event; InvalidArgument naming the payload path."""
    payload = event.payload
    key = f"webhook-{event.source_id}-{event.delivery_id}"
    if isinstance(rule, ResumeAgentApprovalRule):
        raw = lookup(payload, rule.decisions_path)
        if not isinstance(raw, list) or not raw:
            raise InvalidArgument.field(
                f"payload.{rule.decisions_path}", "must be a non-empty list"
            )
        try:
            decisions = [Decision.model_validate(item) for item in raw]
        except ValidationError as exc:
            raise InvalidArgument.field(
                f"payload.{rule.decisions_path}", str(exc.errors()[0]["msg"])
            ) from exc
        return AgentApprovalResume(
            run_id=_string(payload, rule.run_id_path), decisions=decisions, idempotency_key=key
        )
    if isinstance(rule, ResumeWorkflowStepRule):
        return WorkflowStepResume(
            run_id=_string(payload, rule.run_id_path),
            step_id=_string(payload, rule.step_id_path),
            resume_data=_object(payload, rule.resume_data_path, required=False),
            idempotency_key=key,
        )
    if isinstance(rule, StartWorkflowRule):
        return WorkflowStart(
            workflow_name=rule.workflow_name,
            input=_object(payload, rule.input_path),
            idempotency_key=key,
        )
    return DocumentIngest(
        collection_id=rule.collection_id,
        document_id=_string(payload, rule.document_id_path),
        text=_string(payload, rule.text_path),
        idempotency_key=key,
    )


RouteStatus = Literal["routed", "unrouted", "failed"]


class RouteOutcome(BaseModel):
    status: RouteStatus
    route_name: str = ""
    result: str = ""


async def route_event(
    event: WebhookEvent, routes: list[Route], targets: RouteTargets
) -> RouteOutcome:
    """Carry out the first matching rule. Unavailable propagates (retry later); every other
    domain error is the delivery's final result."""
    route = next((r for r in routes if r.matches(event.event_type)), None)
    if route is None:
        return RouteOutcome(status="unrouted", result=f"no route for {event.event_type!r}")
    try:
        action = resolve(route.action, event)
        if isinstance(action, AgentApprovalResume):
            result = await targets.resume_agent_approval(event.tenant, action)
        elif isinstance(action, WorkflowStepResume):
            result = await targets.resume_workflow_step(event.tenant, action)
        elif isinstance(action, WorkflowStart):
            result = await targets.start_workflow(event.tenant, action)
        else:
            result = await targets.ingest_document(event.tenant, action)
    except Unavailable:
        raise
    except LoomworkError as exc:
        return RouteOutcome(
            status="failed", route_name=route.name, result=f"{type(exc).__name__}: {exc.message}"
        )
    return RouteOutcome(status="routed", route_name=route.name, result=result)
