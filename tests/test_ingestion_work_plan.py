"""The parallel ingestion's work plan alone: the order it hands work out in, the bound on
open documents, and the cursor a continued run picks up from."""

from __future__ import annotations

from loomwork.rag.ingestion_models import IngestionCursor, IngestionRequest, OpenDocument
from workflows.ingestion_work import Job, WorkPlan


def _request(documents: int, parallelism: int) -> IngestionRequest:
    return IngestionRequest(
        tenant="t",
        ingestion_id="i",
        index_name="x",
        document_count=documents,
        batch_size=10,
        parallelism=parallelism,
    )


def test_batches_of_open_documents_come_before_new_documents() -> None:
    plan = WorkPlan(_request(3, 2), IngestionCursor())
    assert plan.next_job() == Job("prepare", 0)
    assert plan.next_job() == Job("prepare", 1)
    assert plan.next_job() is None  # two documents open: the third waits
    plan.prepared(0, 25)
    assert [plan.next_job() for _ in range(3)] == [
        Job("embed", 0, 0, 10),
        Job("embed", 0, 10, 20),
        Job("embed", 0, 20, 25),
    ]
    plan.prepared(1, None)  # unchanged or failed: nothing to embed, no longer open
    assert plan.next_job() == Job("prepare", 2)
    for _ in range(3):
        plan.embedded(0)
    assert plan.next_job() == Job("commit", 0)
    plan.committed(0)
    assert plan.next_job() is None and plan.left()  # document 2 is being prepared
    plan.prepared(2, 5)
    assert plan.next_job() == Job("embed", 2, 0, 5)
    plan.embedded(2)
    assert plan.next_job() == Job("commit", 2)
    plan.committed(2)
    assert plan.next_job() is None and not plan.left()


def test_the_cursor_carries_what_is_left_and_a_continued_plan_resumes_there() -> None:
    plan = WorkPlan(_request(4, 2), IngestionCursor())
    plan.next_job(), plan.next_job()
    plan.prepared(0, 30)
    plan.prepared(1, 8)
    first, second = plan.next_job(), plan.next_job()
    assert (first, second) == (Job("embed", 0, 0, 10), Job("embed", 0, 10, 20))
    plan.embedded(0), plan.embedded(0)  # nothing in flight: the run may continue as new
    cursor = plan.cursor(documents_done=1, chunks_done=20, continued=1)
    assert cursor == IngestionCursor(
        next_ordinal=2,
        open_documents=[
            OpenDocument(ordinal=0, chunk_count=30, embedded=20),
            OpenDocument(ordinal=1, chunk_count=8, embedded=0),
        ],
        documents_done=1,
        chunks_done=20,
        continued=1,
    )
    resumed = WorkPlan(_request(4, 2), cursor)
    assert resumed.next_job() == Job("embed", 0, 20, 30)
    assert resumed.next_job() == Job("embed", 1, 0, 8)
    assert resumed.next_job() is None  # two documents open
