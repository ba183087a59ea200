"""The RAG domain's pydantic models: indexes, documents, chunks, filters, retrieval options."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field


class Metric(StrEnum):
    COSINE = "cosine"
    L2 = "l2"
    INNER_PRODUCT = "inner_product"


class DocumentFormat(StrEnum):
    UNSPECIFIED = "unspecified"
    PLAIN_TEXT = "plain_text"
    MARKDOWN = "markdown"
    HTML = "html"
    PDF = "pdf"
    DOCX = "docx"


class IndexSpec(BaseModel):
    """What CreateIndex asks for (defaults already resolved by the caller or by `create`)."""

    name: str
    description: str = ""
    embedding_model: str = ""
    dimension: int = 0
    metric: Metric = Metric.COSINE
    hnsw_m: int = 16
    hnsw_ef_construction: int = 64
    text_search_config: str = "english"
    metadata: dict[str, Any] = Field(default_factory=dict)


class Index(IndexSpec):
    """A stored index with its counters."""

    id: int
    tenant: str
    document_count: int = 0
    chunk_count: int = 0
    create_time: datetime
    update_time: datetime


class DocumentError(BaseModel):
    """Why a document failed: a google.rpc code, a stable reason, a message."""

    code: int
    reason: str
    message: str


class DocumentRecord(BaseModel):
    """A stored document."""

    id: str
    index_name: str
    title: str = ""
    file_name: str = ""
    source_uri: str = ""
    format: DocumentFormat = DocumentFormat.UNSPECIFIED
    metadata: dict[str, Any] = Field(default_factory=dict)
    content_hash: str = ""
    size_bytes: int = 0
    page_count: int = 0
    chunk_count: int = 0
    status: Literal["processing", "ready", "failed"] = "processing"
    error: DocumentError | None = None
    ingestion_id: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None


class Section(BaseModel):
    """A run of extracted text: its page (PDF, 1-based, 0 if none) and heading path."""

    text: str
    page: int = 0
    heading_path: list[str] = Field(default_factory=list)


class ExtractedDocument(BaseModel):
    """A document's text, as sections in reading order; `text` is their concatenation."""

    format: DocumentFormat
    title: str = ""
    page_count: int = 0
    sections: list[Section] = Field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.sections)


class ChunkingStrategy(StrEnum):
    RECURSIVE = "recursive"
    SENTENCE = "sentence"
    TOKEN = "token"
    MARKDOWN = "markdown"


DEFAULT_SEPARATORS = ["\n\n", "\n", ". ", " ", ""]


class ChunkingOptions(BaseModel):
    """Chunking options with defaults filled in (`resolved()`)."""

    strategy: ChunkingStrategy = ChunkingStrategy.RECURSIVE
    chunk_size: int = 0
    chunk_overlap: int | None = None
    separators: list[str] = Field(default_factory=list)
    token_encoding: str = "o200k_base"

    def resolved(self) -> ChunkingOptions:
        size = self.chunk_size or (256 if self.strategy is ChunkingStrategy.TOKEN else 1000)
        overlap = self.chunk_overlap if self.chunk_overlap is not None else size // 10
        return ChunkingOptions(
            strategy=self.strategy,
            chunk_size=size,
            chunk_overlap=overlap,
            separators=list(self.separators or DEFAULT_SEPARATORS),
            token_encoding=self.token_encoding or "o200k_base",
        )


class Chunk(BaseModel):
    """A piece of a document's text, with where it comes from."""

    id: str = ""
    document_id: str
    position: int
    text: str
    page: int = 0
    end_page: int = 0
    heading_path: list[str] = Field(default_factory=list)
    start_char: int = 0
    end_char: int = 0
    token_count: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)


# ----------------------------------------------------------------------------- filters


class Range(BaseModel):
    gt: Any = None
    gte: Any = None
    lt: Any = None
    lte: Any = None


class Condition(BaseModel):
    """One condition on a field (`metadata.a.b`, `document_id`, `format`, `page`, `position`)."""

    field: str
    op: Literal["equals", "not_equals", "any_of", "none_of", "range", "exists"]
    value: Any = None  # scalar, list, Range or bool by `op`


class Filter(BaseModel):
    """One condition, or all / any of nested filters; empty matches everything."""

    condition: Condition | None = None
    all: list[Filter] | None = None
    any: list[Filter] | None = None


# ----------------------------------------------------------------------------- retrieval


class SearchMode(StrEnum):
    VECTOR = "vector"
    HYBRID = "hybrid"


class RerankMethod(StrEnum):
    NONE = "none"
    SIGNALS = "signals"
    LLM = "llm"


class HybridOptions(BaseModel):
    rrf_k: int = 0  # 0: the measured default (query.DEFAULT_RRF_K)
    # both 0: the measured defaults (query.DEFAULT_VECTOR_WEIGHT, DEFAULT_LEXICAL_WEIGHT)
    vector_weight: float = 0.0
    lexical_weight: float = 0.0
    candidates: int = 0  # 0: max(4 * top_k, 40)


class RerankOptions(BaseModel):
    method: RerankMethod = RerankMethod.NONE
    # all 0: semantic 0.2, lexical 0.2, position 0.6 (measured; see rerank.signal_weights)
    semantic_weight: float = 0.0
    lexical_weight: float = 0.0
    position_weight: float = 0.0
    model: str = ""
    candidates: int = 0  # 0: max(3 * top_k, 20)


class RetrievalOptions(BaseModel):
    top_k: int = 10
    filter: Filter | None = None
    mode: SearchMode = SearchMode.VECTOR
    hybrid: HybridOptions = Field(default_factory=HybridOptions)
    rerank: RerankOptions = Field(default_factory=RerankOptions)
    min_score: float = 0.0


class ScoreDetails(BaseModel):
    vector_score: float = 0.0
    vector_rank: int = 0
    lexical_score: float = 0.0
    lexical_rank: int = 0
    fusion_score: float = 0.0
    rerank_score: float = 0.0


class ScoredChunk(BaseModel):
    """A retrieved chunk, its final score (0..1) and the document fields a citation needs."""

    chunk: Chunk
    score: float
    details: ScoreDetails = Field(default_factory=ScoreDetails)
    title: str = ""
    source_uri: str = ""
