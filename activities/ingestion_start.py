"""Starting a stored ingestion's workflow, the one way every entry point does it:
IngestDocuments and UploadDocument, and the webhook routes that ingest a document.

Here rather than in the server because activities start ingestions too, and they do not
import the server; the server imports this.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from temporalio.client import Client
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from loomwork.config import Settings
from loomwork.rag.ingestion_models import (
    INGEST_CONTINUE_AFTER,
    INGEST_PARALLELISM,
    IngestionRecord,
    IngestionRequest,
)

# The workflow type name (activities do not import workflows).
RAG_INGESTION = "RagIngestion"


@dataclass(frozen=True)
class IngestionStarter:
    """Starts ingestions on `task_queue`, each running `parallelism` activities at once and
    continuing as new after `continue_after` (LOOMWORK_INGEST_PARALLELISM and
    LOOMWORK_INGEST_CONTINUE_AFTER)."""

    client: Client
    task_queue: str
    parallelism: int = INGEST_PARALLELISM
    continue_after: int = INGEST_CONTINUE_AFTER

    @classmethod
    def from_settings(cls, client: Client, settings: Settings) -> IngestionStarter:
        return cls(
            client,
            settings.task_queue,
            parallelism=settings.ingest_parallelism,
            continue_after=settings.ingest_continue_after,
        )

    async def start(self, record: IngestionRecord, summary: str) -> None:
        """Start the workflow of the stored ingestion `record`: a start repeated while it
        runs joins it, and one after it ended does nothing. RPCError when Temporal refuses."""
        request = IngestionRequest(
            tenant=record.tenant,
            ingestion_id=record.id,
            index_name=record.index_name,
            document_count=len(record.documents),
            parallelism=self.parallelism,
            continue_after=self.continue_after,
        )
        attributes = [
            SearchAttributePair(SearchAttributeKey.for_keyword(name), value)
            for name, value in (
                ("LoomworkTenant", record.tenant),
                ("LoomworkRun", record.id),
                ("LoomworkStatus", "PENDING"),
            )
        ]
        with contextlib.suppress(WorkflowAlreadyStartedError):
            await self.client.start_workflow(
                RAG_INGESTION,
                request,
                id=record.workflow_id,
                task_queue=self.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=TypedSearchAttributes(attributes),
                static_summary=summary,
            )
