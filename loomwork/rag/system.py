"""Everything RAG needs, wired once per process: store, embedders, retriever, steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from loomwork.llm.chat import ChatModel
from loomwork.rag.answer import AnswerSteps
from loomwork.rag.embedders import Embedders
from loomwork.rag.ingestion import IngestionSteps
from loomwork.rag.query import Retriever
from loomwork.rag.store import RagStore
from loomwork.storage.database import Database
from loomwork.streams.run_events import RunEventLog
from loomwork.usage.ledger import UsageLedger


@dataclass
class RagSystem:
    store: RagStore
    embedders: Embedders
    retriever: Retriever
    ingestion: IngestionSteps
    answers: AnswerSteps

    @classmethod
    def build(
        cls,
        db: Database,
        events: RunEventLog,
        *,
        embedding_model: str,
        chat_model: Callable[[str], ChatModel],
        default_chat_model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        usage: UsageLedger | None = None,
    ) -> RagSystem:
        store = RagStore(db)
        embedders = Embedders(embedding_model, base_url=base_url, api_key=api_key)
        retriever = Retriever(db, store, embedders, chat_model, default_chat_model)
        return cls(
            store=store,
            embedders=embedders,
            retriever=retriever,
            ingestion=IngestionSteps(db, store, embedders, events),
            answers=AnswerSteps(db, retriever, events, chat_model, default_chat_model, usage=usage),
        )
