"""Answer runs: retrieve, assemble the context, stream the model's answer with `[n]`
citations. Steps (one Temporal activity each) over the domain; events go to the
answer's RunEventLog like an agent run's, and the record is kept in Postgres."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from loomwork.errors import NotFound
from loomwork.llm.chat import ChatMessage, ChatModel, ChatUsage, TextDelta
from loomwork.rag.answer_context import ContextOrder, assemble_rag_context, render_context
from loomwork.rag.models import RetrievalOptions, ScoredChunk
from loomwork.rag.query import Retriever
from loomwork.retries import ATTEMPT_LOST, ATTEMPT_LOST_MESSAGE, RetryNotice, retried_failure
from loomwork.storage.database import Database
from loomwork.streams.run_events import RunEventLog
from loomwork.usage.ledger import ModelCall, UsageLedger

log = logging.getLogger(__name__)

DEFAULT_INSTRUCTIONS = (
    "Answer the question using only the numbered context below. Cite every statement "
    "with the number of its source in square brackets, e.g. [1] or [2][3]. If the "
    "context does not contain the answer, say that you do not know."
)
_MARKER = re.compile(r"\[(\d+)\]")


def _now() -> datetime:
    return datetime.now(UTC)


def answer_log_key(tenant: str, answer_id: str) -> str:
    return f"answer/{tenant}/{answer_id}"


class CitationInfo(BaseModel):
    number: int
    chunk_id: str
    document_id: str
    title: str = ""
    source_uri: str = ""
    page: int = 0
    heading_path: list[str] = Field(default_factory=list)
    position: int = 0
    snippet: str = ""


def citation_for(number: int, chunk: ScoredChunk) -> CitationInfo:
    return CitationInfo(
        number=number,
        chunk_id=chunk.chunk.id,
        document_id=chunk.chunk.document_id,
        title=chunk.title,
        source_uri=chunk.source_uri,
        page=chunk.chunk.page,
        heading_path=list(chunk.chunk.heading_path),
        position=chunk.chunk.position,
        snippet=chunk.chunk.text[:300],
    )


class AnswerRequest(BaseModel):
    tenant: str
    answer_id: str
    index_name: str
    query: str
    retrieval: RetrievalOptions = Field(default_factory=RetrievalOptions)
    max_context_tokens: int = 4000
    order: ContextOrder = ContextOrder.SCORE
    model: str = ""
    instructions: str = ""
    temperature: float | None = None
    max_output_tokens: int | None = None


AnswerStatus = Literal["pending", "running", "succeeded", "failed", "canceled"]


class AnswerError(BaseModel):
    code: int
    reason: str
    message: str


# What an error type means to a caller: a google.rpc code and a reason.
_ERROR_CODES = {
    "NotFound": (5, "NOT_FOUND"),
    "InvalidArgument": (3, "INVALID_ARGUMENT"),
    "ModelRequestRejected": (9, "MODEL_REQUEST_REJECTED"),
    "ModelRateLimited": (8, "MODEL_RATE_LIMITED"),
    "ModelUnavailable": (14, "RETRIES_EXHAUSTED"),
}


def answer_error(error_type: str, message: str, *, retrying: bool = False) -> AnswerError:
    """The error of a failed answer (or, `retrying`, of an attempt tried again) of that type."""
    if retrying:
        code, reason = retried_failure(error_type)
    else:
        code, reason = _ERROR_CODES.get(error_type, (13, "ANSWER_FAILED"))
    return AnswerError(code=code, reason=reason, message=message)


class AnswerRecord(BaseModel):
    id: str
    index_name: str
    query: str
    status: AnswerStatus = "pending"
    text: str = ""
    citations: list[CitationInfo] = Field(default_factory=list)
    context: list[ScoredChunk] = Field(default_factory=list)
    usage: ChatUsage = Field(default_factory=ChatUsage)
    model: str = ""
    error: AnswerError | None = None
    create_time: datetime = Field(default_factory=_now)
    end_time: datetime | None = None
    workflow_id: str = ""
    # Id of the terminal event (finished / failed): WatchAnswer rebuilds that event with it
    # once the answer's events have expired from Redis.
    terminal_event_id: int = 0


class AnswerEvent(BaseModel):
    type: Literal[
        "started", "retrieval", "text_delta", "citation", "usage", "retrying", "finished", "failed"
    ]
    time: datetime = Field(default_factory=_now)
    index_name: str = ""
    query: str = ""
    model: str = ""
    chunks: list[ScoredChunk] = Field(default_factory=list)
    retrieved_count: int = 0
    context_tokens: int = 0
    text: str = ""
    citation: CitationInfo | None = None
    usage: ChatUsage | None = None
    attempt: int = 0
    error: AnswerError | None = None
    backoff_seconds: float | None = None  # retrying: the wait before the attempt, when said
    record: AnswerRecord | None = None


def terminal_event(record: AnswerRecord) -> AnswerEvent:
    """The terminal event (`failed`, else `finished`) of an answer that has ended."""
    if record.status == "failed":
        event = AnswerEvent(type="failed", error=record.error, record=record)
    else:
        event = AnswerEvent(type="finished", record=record)
    event.time = record.end_time or record.create_time
    return event


class RetrievedContext(BaseModel):
    chunks: list[ScoredChunk]
    usage: ChatUsage = Field(default_factory=ChatUsage)


class GeneratedAnswer(BaseModel):
    text: str
    citations: list[CitationInfo]
    usage: ChatUsage
    model: str


class AnswerSteps:
    def __init__(
        self,
        db: Database,
        retriever: Retriever,
        events: RunEventLog,
        chat_model: Callable[[str], ChatModel],
        default_model: str,
        usage: UsageLedger | None = None,
    ) -> None:
        self.db = db
        self.retriever = retriever
        self.events = events
        self.chat_model = chat_model
        self.default_model = default_model
        self.usage = usage  # where each model call's tokens are recorded

    # -- records

    async def create(self, tenant: str, record: AnswerRecord) -> tuple[AnswerRecord, bool]:
        """Store a new answer record; (stored record, created?)."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "insert into rag_answers (tenant_id, id, index_name, record)"
                " values (%s, %s, %s, %s) on conflict do nothing returning id",
                (tenant, record.id, record.index_name, record.model_dump_json()),
            )
            created = await cur.fetchone() is not None
        if not created:
            return await self.get(tenant, record.id), False
        return record, True

    async def get(self, tenant: str, answer_id: str) -> AnswerRecord:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "select record from rag_answers where tenant_id = %s and id = %s",
                (tenant, answer_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"answer {answer_id!r} not found")
        return AnswerRecord.model_validate(row["record"])

    async def _save(self, tenant: str, record: AnswerRecord) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                "update rag_answers set record = %s where tenant_id = %s and id = %s",
                (record.model_dump_json(), tenant, record.id),
            )

    async def publish(
        self, request: AnswerRequest, event: AnswerEvent, *, patience: float | None = None
    ) -> int:
        """Append one event; its id (0 when dropped: the answer had already ended; for a
        retried terminal event, the id the first one was stored under). A `retrying` event
        is said once per attempt, by the attempt that failed or else by the next one.
        `patience`: how long to wait out Redis (None: the event log's own)."""
        terminal = event.type in ("finished", "failed")
        once = f"retrying:{event.attempt}" if event.type == "retrying" else ""
        key = answer_log_key(request.tenant, request.answer_id)
        payload = event.model_dump_json().encode()
        return await self.events.publish(
            key, payload, terminal=terminal, once=once, patience=patience
        )

    async def retrying(self, request: AnswerRequest, notice: RetryNotice) -> None:
        """Say that the failed model call is tried again: what failed and when the next
        attempt starts. One try: the failure may be Redis's (the next attempt then says the
        call is retried, without the cause)."""
        event = AnswerEvent(
            type="retrying",
            attempt=notice.attempt,
            error=answer_error(notice.error_type, notice.message, retrying=True),
            backoff_seconds=notice.backoff.total_seconds(),
        )
        await self.publish(request, event, patience=0)

    # -- steps

    def model_name(self, request: AnswerRequest) -> str:
        return request.model or self.default_model

    async def _record(
        self, request: AnswerRequest, call: str, model: str, usage: ChatUsage, attempt: int
    ) -> None:
        """The tokens of one of the answer's model calls, in the usage ledger (once per call,
        whatever the retries)."""
        if self.usage is not None:
            await self.usage.record(
                ModelCall(
                    tenant=request.tenant,
                    run_id=request.answer_id,
                    call_key=call,
                    run_kind="answer",
                    model=model,
                    usage=usage,
                    attempt=attempt,
                )
            )

    async def retrieve(self, request: AnswerRequest) -> RetrievedContext:
        record = await self.get(request.tenant, request.answer_id)
        if record.status == "pending":
            record.status = "running"
            record.model = self.model_name(request)
            await self._save(request.tenant, record)
            await self.publish(
                request,
                AnswerEvent(
                    type="started",
                    index_name=request.index_name,
                    query=request.query,
                    model=record.model,
                ),
            )
        results, usage = await self.retriever.search(
            request.tenant, request.index_name, request.query, request.retrieval
        )
        if usage.prompt_tokens or usage.completion_tokens:  # the model reranked
            reranker = request.retrieval.rerank.model or self.retriever.default_chat_model
            await self._record(request, "rerank", reranker, usage, 1)
        assembled = assemble_rag_context(
            results, max_tokens=request.max_context_tokens, order=request.order
        )
        record.context = assembled.chunks
        await self._save(request.tenant, record)
        await self.publish(
            request,
            AnswerEvent(
                type="retrieval",
                chunks=assembled.chunks,
                retrieved_count=assembled.retrieved_count,
                context_tokens=assembled.context_tokens,
            ),
        )
        return RetrievedContext(chunks=assembled.chunks, usage=usage)

    async def generate(
        self,
        request: AnswerRequest,
        context: RetrievedContext,
        attempt: int = 1,
        heartbeat: Callable[[], None] | None = None,
    ) -> GeneratedAnswer:
        """Stream the model's answer; each `[n]` cited for the first time sends a citation."""
        if attempt > 1:  # once: the failed attempt may have said it, with its cause
            lost = answer_error(ATTEMPT_LOST, ATTEMPT_LOST_MESSAGE, retrying=True)
            await self.publish(request, AnswerEvent(type="retrying", attempt=attempt, error=lost))
        system = (request.instructions or DEFAULT_INSTRUCTIONS) + "\n\nContext:\n\n"
        system += render_context(context.chunks) if context.chunks else "(no context found)"
        text: list[str] = []
        cited: dict[int, CitationInfo] = {}

        async def on_event(event: object) -> None:
            if heartbeat is not None:
                heartbeat()
            if not isinstance(event, TextDelta):
                return
            text.append(event.delta)
            await self.publish(request, AnswerEvent(type="text_delta", text=event.delta))
            for match in _MARKER.finditer("".join(text)):
                number = int(match.group(1))
                if 1 <= number <= len(context.chunks) and number not in cited:
                    cited[number] = citation_for(number, context.chunks[number - 1])
                    await self.publish(
                        request, AnswerEvent(type="citation", citation=cited[number])
                    )

        name = self.model_name(request)
        model = self.chat_model(name)
        try:
            result = await model.stream(
                [ChatMessage.system(system), ChatMessage.user(request.query)],
                on_event=on_event,
                temperature=request.temperature,
                max_tokens=request.max_output_tokens,
            )
        finally:
            await model.aclose()
        await self._record(request, "answer", name, result.usage, attempt)
        usage = result.usage.plus(context.usage)
        await self.publish(request, AnswerEvent(type="usage", usage=usage))
        return GeneratedAnswer(
            text=result.text,
            citations=[cited[n] for n in sorted(cited)],
            usage=usage,
            model=name,
        )

    async def finish(
        self,
        request: AnswerRequest,
        answer: GeneratedAnswer | None,
        status: AnswerStatus,
        error: AnswerError | None = None,
    ) -> AnswerRecord:
        record = await self.get(request.tenant, request.answer_id)
        if record.status in ("succeeded", "failed", "canceled"):
            if not record.terminal_event_id:
                # A retry after the status was saved but before the terminal event was
                # published (or its id saved): publish it now, or take its stored id.
                await self._publish_terminal(request, record)
            return record
        if answer is not None:
            record.text, record.citations, record.usage = (
                answer.text,
                answer.citations,
                answer.usage,
            )
            record.model = answer.model
        record.status = status
        record.error = error
        record.end_time = _now()
        record.model = record.model or self.model_name(request)
        await self._save(request.tenant, record)
        await self._publish_terminal(request, record)
        return record

    async def _publish_terminal(self, request: AnswerRequest, record: AnswerRecord) -> None:
        record.terminal_event_id = await self.publish(request, terminal_event(record))
        if record.terminal_event_id:
            await self._save(request.tenant, record)
