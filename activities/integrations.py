"""Webhook routing as an activity, and the Temporal-backed targets routes land on."""

from __future__ import annotations

import hashlib
import json
import re

from pydantic import ValidationError
from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.heartbeats import heartbeating
from activities.ingestion_start import IngestionStarter
from activities.run_lookup import RunLookup
from activities.workflow_runs import AGENT_RUN, DSL_RUN, WorkflowRunStarter
from loomwork.agents.directory import RunDirectory
from loomwork.agents.run_models import ResumeInput, RunState
from loomwork.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    rejection_error,
)
from loomwork.flows.registry import WorkflowRegistry
from loomwork.flows.state import ResumeRequest
from loomwork.flows.state import RunState as WorkflowRunState
from loomwork.ids import is_valid_client_id
from loomwork.integrations.deliveries import DeliveryStore
from loomwork.integrations.routing import (
    AgentApprovalResume,
    DocumentIngest,
    RouteOutcome,
    RouteTargets,
    WebhookEvent,
    WorkflowStart,
    WorkflowStepResume,
    route_event,
)
from loomwork.integrations.sources import WebhookSourceStore
from loomwork.rag.ingestion_models import (
    SourceDocument,
    derived_document_id,
    new_ingestion,
)
from loomwork.rag.models import ChunkingOptions, DocumentFormat
from loomwork.rag.system import RagSystem
from loomwork.streams.run_events import RunEventLog

_DOCUMENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _temporal_error(error: RPCError, what: str) -> Exception:
    if error.status == RPCStatusCode.NOT_FOUND:
        return NotFound(f"{what} not found")
    return Unavailable(f"Temporal: {error.message}")


def _workflow_update_rejection(error: WorkflowUpdateFailedError) -> Exception:
    cause = error.cause
    if isinstance(cause, ApplicationError):
        rejection = rejection_error(cause.type, cause.message, cause.details)
        if isinstance(rejection, InvalidArgument):  # a delivery's result: name every field
            return InvalidArgument(rejection.violations)
        return rejection
    return FailedPrecondition(str(cause or error))


class TemporalRouteTargets:
    """`RouteTargets` over Temporal: the same Update as ResumeRun, the workflow `resume` signal."""

    def __init__(
        self,
        client: Client,
        directory: RunDirectory,
        *,
        workflows: WorkflowRegistry | None = None,
        rag: RagSystem | None = None,
        task_queue: str = "",
        events: RunEventLog,
        ingestions: IngestionStarter | None = None,
    ) -> None:
        self.client = client
        # LOOMWORK_INGEST_* as the worker's settings say (the defaults without them).
        self.ingestions = ingestions or IngestionStarter(client, task_queue)
        self.directory = directory
        self.workflows = workflows
        self.rag = rag
        self.task_queue = task_queue
        self.workflow_runs = RunDirectory(directory.redis, prefix="loomwork:workflow-run")
        self.agent_runs = RunLookup(directory, client, AGENT_RUN)
        self.dsl_runs = RunLookup(self.workflow_runs, client, DSL_RUN)
        self.starter = WorkflowRunStarter(client, events, self.workflow_runs, task_queue)

    async def resume_agent_approval(self, tenant: str, action: AgentApprovalResume) -> str:
        workflow_id = await self.agent_runs.workflow_id(tenant, action.run_id)
        if workflow_id is None:
            raise NotFound(f"agent run {action.run_id!r} not found")
        handle = self.client.get_workflow_handle(workflow_id)
        try:
            state = await handle.execute_update(
                "resume_run",
                ResumeInput(decisions=action.decisions),
                id=action.idempotency_key,
                result_type=RunState,
            )
        except WorkflowUpdateFailedError as error:
            raise _workflow_update_rejection(error) from error
        except RPCError as error:
            raise _temporal_error(error, f"agent run {action.run_id!r}") from error
        decided = len(action.decisions)
        return f"agent run {action.run_id} resumed ({decided} decision(s)), now {state.status}"

    async def resume_workflow_step(self, tenant: str, action: WorkflowStepResume) -> str:
        """The `resume_run` Update WorkflowService.ResumeRun sends: validated, answered."""
        workflow_id = await self._workflow_run(tenant, action.run_id)
        request = ResumeRequest(
            run_id=action.run_id,
            step_id=action.step_id,
            resume_data=action.resume_data,
            # DslRun answers a resume it has seen with the run (a retried routing).
            request_id=action.idempotency_key,
        )
        try:
            # The key is also the Update's id: Temporal answers a retried routing with the
            # first outcome, even once the resume has let the run end.
            state = await self.client.get_workflow_handle(workflow_id).execute_update(
                "resume_run", request, id=action.idempotency_key, result_type=WorkflowRunState
            )
        except WorkflowUpdateFailedError as error:
            raise _workflow_update_rejection(error) from error
        except RPCError as error:
            raise _temporal_error(error, f"workflow run {action.run_id!r}") from error
        data = json.dumps(action.resume_data)[:200]
        return (
            f"workflow run {action.run_id} step {action.step_id} resumed with {data}, "
            f"now {state.status}"
        )

    async def _workflow_run(self, tenant: str, run_id: str) -> str:
        if not is_valid_client_id(run_id) or not is_valid_client_id(tenant):
            raise InvalidArgument.field("payload.run_id", "is not a run id")
        try:
            known = await self.dsl_runs.workflow_id(tenant, run_id)
        except RPCError as error:
            raise _temporal_error(error, f"workflow run {run_id!r}") from error
        if known is None:
            raise NotFound(f"workflow run {run_id!r} not found")
        return known

    async def start_workflow(self, tenant: str, action: WorkflowStart) -> str:
        """A DslRun of the workflow's newest version; one per delivery (its idempotency key
        is the run id)."""
        if self.workflows is None:
            raise FailedPrecondition("this worker has no workflow registry")
        definition = self.workflows.latest(action.workflow_name)
        try:
            data = definition.input_model.model_validate(action.input)
        except ValidationError as exc:
            raise InvalidArgument(  # the message names each field of the workflow's input
                [
                    FieldViolation(".".join(["input", *(str(p) for p in e["loc"])]), e["msg"])
                    for e in exc.errors()
                ]
            ) from exc
        run_id = action.idempotency_key
        try:
            # One run per delivery: a retried routing joins the run while it runs, and does
            # not start it again once it has finished.
            await self.starter.start(
                tenant,
                run_id,
                definition,
                data.model_dump(mode="json"),
                summary=f"workflow {definition.id} started by a webhook, run {run_id}",
            )
        except RPCError as error:
            raise _temporal_error(error, f"workflow {definition.id!r}") from error
        return f"started workflow {definition.id} run {run_id}"

    async def ingest_document(self, tenant: str, action: DocumentIngest) -> str:
        """A durable RAG ingestion of the payload's text into the index (`collection_id`);
        one ingestion per delivery (its idempotency key is the ingestion id)."""
        if self.rag is None:
            raise FailedPrecondition("this worker has no RAG system")
        await self.rag.store.get_index(tenant, action.collection_id)
        data = action.text.encode("utf-8")
        if not data:
            raise InvalidArgument.field("payload.text", "must not be empty")
        document_id = action.document_id
        if not _DOCUMENT_ID.match(document_id):
            document_id = derived_document_id(data)
        source = SourceDocument(
            document_id=document_id,
            format=DocumentFormat.PLAIN_TEXT,
            size_bytes=len(data),
            content_hash=hashlib.sha256(data).hexdigest(),
        )
        record = new_ingestion(
            tenant, action.collection_id, action.idempotency_key, [source], ChunkingOptions()
        )
        stored = await self.rag.ingestion.create(record, [data])
        try:
            await self.ingestions.start(
                stored, f"ingest a webhook's document into {stored.index_name}"
            )
        except RPCError as error:
            raise _temporal_error(error, f"ingestion {stored.id!r}") from error
        return f"ingesting document {document_id} into {stored.index_name}, ingestion {stored.id}"


class IntegrationActivities:
    def __init__(
        self, sources: WebhookSourceStore, deliveries: DeliveryStore, targets: RouteTargets
    ) -> None:
        self.sources = sources
        self.deliveries = deliveries
        self.targets = targets

    @activity.defn(name="webhook_route")
    async def route(self, event: WebhookEvent) -> RouteOutcome:
        """Route by the source's current rules and record the outcome (once)."""
        return await heartbeating(self._route(event))

    async def _route(self, event: WebhookEvent) -> RouteOutcome:
        try:
            source = await self.sources.get(event.tenant, event.source_id)
        except NotFound as exc:
            outcome = RouteOutcome(status="failed", result=exc.message)
        else:
            outcome = await route_event(event, source.routes, self.targets)
        delivery = await self.deliveries.finish(
            event.tenant, event.source_id, event.delivery_id, outcome
        )
        activity.logger.info(
            "webhook %s/%s routed: %s %s",
            event.source_id,
            event.delivery_id,
            delivery.status,
            delivery.result,
        )
        return RouteOutcome(
            status=delivery.status if delivery.status != "received" else outcome.status,
            route_name=delivery.route_name,
            result=delivery.result,
        )
