"""Activities of ingestions and answers: thin wrappers over loomwork.rag."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity

from activities.agents import application_error, model_call
from activities.heartbeats import heartbeating
from loomwork.errors import LoomworkError
from loomwork.rag.answer import (
    AnswerError,
    AnswerRecord,
    AnswerRequest,
    AnswerStatus,
    AnswerSteps,
    GeneratedAnswer,
    RetrievedContext,
)
from loomwork.rag.ingestion import IngestionSteps
from loomwork.rag.ingestion_models import (
    IngestionRecord,
    IngestionRequest,
    PreparedDocument,
)
from loomwork.retries import RetryNotice


class RagActivities:
    def __init__(self, ingestion: IngestionSteps, answers: AnswerSteps) -> None:
        self.ingestion = ingestion
        self.answers = answers

    @activity.defn(name="rag_ingest_start")
    async def ingest_start(self, request: IngestionRequest) -> None:
        try:
            await self.ingestion.start(request)
        except LoomworkError as error:
            raise application_error(error) from error

    @activity.defn(name="rag_ingest_prepare")
    async def ingest_prepare(self, request: IngestionRequest, ordinal: int) -> PreparedDocument:
        try:
            return await heartbeating(self.ingestion.prepare(request, ordinal))
        except LoomworkError as error:
            raise application_error(error) from error

    @activity.defn(name="rag_ingest_embed")
    async def ingest_embed(
        self, request: IngestionRequest, ordinal: int, start: int, end: int
    ) -> int:
        try:
            return await heartbeating(self.ingestion.embed_batch(request, ordinal, start, end))
        except LoomworkError as error:
            raise application_error(error) from error

    @activity.defn(name="rag_ingest_commit")
    async def ingest_commit(self, request: IngestionRequest, ordinal: int) -> None:
        try:
            await self.ingestion.commit(request, ordinal)
        except LoomworkError as error:
            raise application_error(error) from error

    @activity.defn(name="rag_ingest_finish")
    async def ingest_finish(
        self, request: IngestionRequest, canceled: bool, error: str
    ) -> IngestionRecord:
        return await self.ingestion.finish(request, canceled=canceled, error=error)

    @activity.defn(name="rag_answer_retrieve")
    async def answer_retrieve(self, request: AnswerRequest) -> RetrievedContext:
        try:
            return await self.answers.retrieve(request)
        except LoomworkError as error:
            raise application_error(error) from error

    @activity.defn(name="rag_answer_generate")
    async def answer_generate(
        self, request: AnswerRequest, context: RetrievedContext
    ) -> GeneratedAnswer:
        async def retrying(notice: RetryNotice) -> None:
            await self.answers.retrying(request, notice)

        work = self.answers.generate(
            request, context, attempt=activity.info().attempt, heartbeat=activity.heartbeat
        )
        return await model_call(work, retrying)

    @activity.defn(name="rag_answer_finish")
    async def answer_finish(
        self,
        request: AnswerRequest,
        answer: GeneratedAnswer | None,
        status: AnswerStatus,
        error: AnswerError | None,
    ) -> AnswerRecord:
        return await self.answers.finish(request, answer, status, error)

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.ingest_start,
            self.ingest_prepare,
            self.ingest_embed,
            self.ingest_commit,
            self.ingest_finish,
            self.answer_retrieve,
            self.answer_generate,
            self.answer_finish,
        ]
