"""RAG protobuf ↔ domain conversion; protobuf types stop here."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from google.protobuf import json_format, struct_pb2

from loomwork.errors import InvalidArgument, Violations
from loomwork.ids import CLIENT_ID_RULE, is_valid_client_id
from loomwork.rag import answer as answers
from loomwork.rag import ingestion_models as ing
from loomwork.rag import models as m
from loomwork.rag.answer_context import ContextOrder
from loomwork.rag.query import MAX_QUERY_CHARS, validate_retrieval
from loomwork.rag.store import validate_index_name
from protos.loomwork.v1 import rag_pb2, run_pb2
from server.servicers.message_convert import usage_to_proto
from server.servicers.well_known_convert import set_timestamp, struct_to_dict

METRIC_FROM = {
    rag_pb2.DISTANCE_METRIC_UNSPECIFIED: m.Metric.COSINE,
    rag_pb2.DISTANCE_METRIC_COSINE: m.Metric.COSINE,
    rag_pb2.DISTANCE_METRIC_L2: m.Metric.L2,
    rag_pb2.DISTANCE_METRIC_INNER_PRODUCT: m.Metric.INNER_PRODUCT,
}
METRIC_TO = {
    m.Metric.COSINE: rag_pb2.DISTANCE_METRIC_COSINE,
    m.Metric.L2: rag_pb2.DISTANCE_METRIC_L2,
    m.Metric.INNER_PRODUCT: rag_pb2.DISTANCE_METRIC_INNER_PRODUCT,
}
FORMAT_FROM = {
    rag_pb2.DOCUMENT_FORMAT_UNSPECIFIED: m.DocumentFormat.UNSPECIFIED,
    rag_pb2.DOCUMENT_FORMAT_PLAIN_TEXT: m.DocumentFormat.PLAIN_TEXT,
    rag_pb2.DOCUMENT_FORMAT_MARKDOWN: m.DocumentFormat.MARKDOWN,
    rag_pb2.DOCUMENT_FORMAT_HTML: m.DocumentFormat.HTML,
    rag_pb2.DOCUMENT_FORMAT_PDF: m.DocumentFormat.PDF,
    rag_pb2.DOCUMENT_FORMAT_DOCX: m.DocumentFormat.DOCX,
}
FORMAT_TO = {v: k for k, v in FORMAT_FROM.items()}
STRATEGY_FROM = {
    rag_pb2.CHUNKING_STRATEGY_UNSPECIFIED: m.ChunkingStrategy.RECURSIVE,
    rag_pb2.CHUNKING_STRATEGY_RECURSIVE: m.ChunkingStrategy.RECURSIVE,
    rag_pb2.CHUNKING_STRATEGY_SENTENCE: m.ChunkingStrategy.SENTENCE,
    rag_pb2.CHUNKING_STRATEGY_TOKEN: m.ChunkingStrategy.TOKEN,
    rag_pb2.CHUNKING_STRATEGY_MARKDOWN: m.ChunkingStrategy.MARKDOWN,
}
STRATEGY_TO = {
    m.ChunkingStrategy.RECURSIVE: rag_pb2.CHUNKING_STRATEGY_RECURSIVE,
    m.ChunkingStrategy.SENTENCE: rag_pb2.CHUNKING_STRATEGY_SENTENCE,
    m.ChunkingStrategy.TOKEN: rag_pb2.CHUNKING_STRATEGY_TOKEN,
    m.ChunkingStrategy.MARKDOWN: rag_pb2.CHUNKING_STRATEGY_MARKDOWN,
}
DOC_STATUS_TO = {
    "processing": rag_pb2.DOCUMENT_STATUS_PROCESSING,
    "ready": rag_pb2.DOCUMENT_STATUS_READY,
    "failed": rag_pb2.DOCUMENT_STATUS_FAILED,
}
DOC_STATUS_FROM = {v: k for k, v in DOC_STATUS_TO.items()}
INGESTION_STATUS_TO = {
    "pending": rag_pb2.INGESTION_STATUS_PENDING,
    "running": rag_pb2.INGESTION_STATUS_RUNNING,
    "succeeded": rag_pb2.INGESTION_STATUS_SUCCEEDED,
    "partially_succeeded": rag_pb2.INGESTION_STATUS_PARTIALLY_SUCCEEDED,
    "failed": rag_pb2.INGESTION_STATUS_FAILED,
    "canceled": rag_pb2.INGESTION_STATUS_CANCELED,
}
INGESTION_STATUS_FROM = {v: k for k, v in INGESTION_STATUS_TO.items()}
INGESTION_DOC_STATUS_TO = {
    "pending": rag_pb2.INGESTION_DOCUMENT_STATUS_PENDING,
    "extracting": rag_pb2.INGESTION_DOCUMENT_STATUS_EXTRACTING,
    "chunking": rag_pb2.INGESTION_DOCUMENT_STATUS_CHUNKING,
    "embedding": rag_pb2.INGESTION_DOCUMENT_STATUS_EMBEDDING,
    "succeeded": rag_pb2.INGESTION_DOCUMENT_STATUS_SUCCEEDED,
    "unchanged": rag_pb2.INGESTION_DOCUMENT_STATUS_UNCHANGED,
    "failed": rag_pb2.INGESTION_DOCUMENT_STATUS_FAILED,
    "canceled": rag_pb2.INGESTION_DOCUMENT_STATUS_CANCELED,
}
RUN_STATUS_TO = {
    "pending": run_pb2.RUN_STATUS_PENDING,
    "running": run_pb2.RUN_STATUS_RUNNING,
    "succeeded": run_pb2.RUN_STATUS_SUCCEEDED,
    "failed": run_pb2.RUN_STATUS_FAILED,
    "canceled": run_pb2.RUN_STATUS_CANCELED,
}


def page_size_from_proto(value: int, field: str = "page_size") -> int:
    """A request's page size (0: 50); INVALID_ARGUMENT past 1000."""
    if not 0 <= value <= 1000:
        raise InvalidArgument.field(field, "must be 1..1000 (0 means 50)")
    return value or 50


def _value(value: struct_pb2.Value) -> Any:
    return json_format.MessageToDict(value)


def _dict(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


# -- indexes and documents


def index_spec_from_proto(index: rag_pb2.Index) -> m.IndexSpec:
    if index.metric not in METRIC_FROM:
        raise InvalidArgument.field("index.metric", "is not a known DistanceMetric")
    return m.IndexSpec(
        name=index.name,
        description=index.description,
        embedding_model=index.embedding_model,
        dimension=index.dimension,
        metric=METRIC_FROM[index.metric],
        hnsw_m=index.hnsw.m or 16,
        hnsw_ef_construction=index.hnsw.ef_construction or 64,
        text_search_config=index.text_search_config or "english",
        metadata=struct_to_dict(index.metadata) if index.HasField("metadata") else {},
    )


def index_to_proto(index: m.Index) -> rag_pb2.Index:
    out = rag_pb2.Index(
        name=index.name,
        description=index.description,
        embedding_model=index.embedding_model,
        dimension=index.dimension,
        metric=METRIC_TO[index.metric],
        hnsw=rag_pb2.HnswOptions(m=index.hnsw_m, ef_construction=index.hnsw_ef_construction),
        text_search_config=index.text_search_config,
        document_count=index.document_count,
        chunk_count=index.chunk_count,
    )
    out.metadata.CopyFrom(_dict(index.metadata))
    set_timestamp(out.create_time, index.create_time)
    set_timestamp(out.update_time, index.update_time)
    return out


def _run_error(error: Any) -> run_pb2.RunError:
    return run_pb2.RunError(code=error.code, reason=error.reason, message=error.message)


def document_to_proto(doc: m.DocumentRecord) -> rag_pb2.Document:
    out = rag_pb2.Document(
        id=doc.id,
        index_name=doc.index_name,
        title=doc.title,
        file_name=doc.file_name,
        source_uri=doc.source_uri,
        format=FORMAT_TO[doc.format],
        content_hash=doc.content_hash,
        size_bytes=doc.size_bytes,
        page_count=doc.page_count,
        chunk_count=doc.chunk_count,
        status=DOC_STATUS_TO[doc.status],
        ingestion_id=doc.ingestion_id,
    )
    out.metadata.CopyFrom(_dict(doc.metadata))
    if doc.error is not None:
        out.error.CopyFrom(_run_error(doc.error))
    if doc.create_time:
        set_timestamp(out.create_time, doc.create_time)
    if doc.update_time:
        set_timestamp(out.update_time, doc.update_time)
    return out


def chunking_from_proto(options: rag_pb2.ChunkingOptions) -> m.ChunkingOptions:
    if options.strategy not in STRATEGY_FROM:
        raise InvalidArgument.field("chunking.strategy", "is not a known ChunkingStrategy")
    return m.ChunkingOptions(
        strategy=STRATEGY_FROM[options.strategy],
        chunk_size=options.chunk_size,
        chunk_overlap=options.chunk_overlap if options.HasField("chunk_overlap") else None,
        separators=list(options.separators),
        token_encoding=options.token_encoding,
    )


def chunking_to_proto(options: m.ChunkingOptions) -> rag_pb2.ChunkingOptions:
    return rag_pb2.ChunkingOptions(
        strategy=STRATEGY_TO[options.strategy],
        chunk_size=options.chunk_size,
        chunk_overlap=options.chunk_overlap or 0,
        separators=options.separators,
        token_encoding=options.token_encoding,
    )


# -- filters and retrieval


def filter_from_proto(f: rag_pb2.MetadataFilter) -> m.Filter | None:
    kind = f.WhichOneof("filter")
    if kind is None:
        return None
    if kind == "condition":
        c = f.condition
        op = c.WhichOneof("op")
        if op is None:
            raise InvalidArgument.field("filter.condition", "set one operator")
        value: Any
        if op in ("equals", "not_equals"):
            value = _value(getattr(c, op))
        elif op in ("any_of", "none_of"):
            value = [_value(v) for v in getattr(c, op).values]
        elif op == "range":
            r = c.range
            value = m.Range(
                gt=_value(r.gt) if r.HasField("gt") else None,
                gte=_value(r.gte) if r.HasField("gte") else None,
                lt=_value(r.lt) if r.HasField("lt") else None,
                lte=_value(r.lte) if r.HasField("lte") else None,
            )
        else:
            value = c.exists
        return m.Filter(condition=m.Condition(field=c.field, op=op, value=value))
    children = [filter_from_proto(child) or m.Filter() for child in getattr(f, kind).filters]
    return m.Filter(**{kind: children})


def retrieval_from_proto(options: rag_pb2.RetrievalOptions) -> m.RetrievalOptions:
    mode = (
        m.SearchMode.HYBRID if options.mode == rag_pb2.SEARCH_MODE_HYBRID else m.SearchMode.VECTOR
    )
    if options.mode not in (0, 1, 2):
        raise InvalidArgument.field("retrieval.mode", "is not a known SearchMode")
    method = {
        rag_pb2.RERANK_METHOD_UNSPECIFIED: m.RerankMethod.NONE,
        rag_pb2.RERANK_METHOD_SIGNALS: m.RerankMethod.SIGNALS,
        rag_pb2.RERANK_METHOD_LLM: m.RerankMethod.LLM,
    }.get(options.rerank.method)
    if method is None:
        raise InvalidArgument.field("retrieval.rerank.method", "is not a known RerankMethod")
    return m.RetrievalOptions(
        top_k=options.top_k,
        filter=filter_from_proto(options.filter) if options.HasField("filter") else None,
        mode=mode,
        hybrid=m.HybridOptions(
            rrf_k=options.hybrid.rrf_k,
            vector_weight=options.hybrid.vector_weight,
            lexical_weight=options.hybrid.lexical_weight,
            candidates=options.hybrid.candidates,
        ),
        rerank=m.RerankOptions(
            method=method,
            semantic_weight=options.rerank.semantic_weight,
            lexical_weight=options.rerank.lexical_weight,
            position_weight=options.rerank.position_weight,
            model=options.rerank.model,
            candidates=options.rerank.candidates,
        ),
        min_score=options.min_score,
    )


def context_order_from_proto(order: int) -> ContextOrder:
    if order == rag_pb2.CONTEXT_ORDER_POSITION:
        return ContextOrder.POSITION
    if order in (rag_pb2.CONTEXT_ORDER_UNSPECIFIED, rag_pb2.CONTEXT_ORDER_SCORE):
        return ContextOrder.SCORE
    raise InvalidArgument.field("context.order", "is not a known ContextOrder")


def chunk_to_proto(chunk: m.Chunk) -> rag_pb2.Chunk:
    out = rag_pb2.Chunk(
        id=chunk.id,
        document_id=chunk.document_id,
        position=chunk.position,
        text=chunk.text,
        page=chunk.page,
        end_page=chunk.end_page,
        heading_path=chunk.heading_path,
        start_char=chunk.start_char,
        end_char=chunk.end_char,
        token_count=chunk.token_count,
    )
    out.metadata.CopyFrom(_dict(chunk.metadata))
    return out


def citation_to_proto(c: answers.CitationInfo) -> rag_pb2.Citation:
    return rag_pb2.Citation(
        number=c.number,
        chunk_id=c.chunk_id,
        document_id=c.document_id,
        title=c.title,
        source_uri=c.source_uri,
        page=c.page,
        heading_path=c.heading_path,
        position=c.position,
        snippet=c.snippet,
    )


def scored_to_proto(result: m.ScoredChunk, number: int) -> rag_pb2.ScoredChunk:
    d = result.details
    return rag_pb2.ScoredChunk(
        chunk=chunk_to_proto(result.chunk),
        score=result.score,
        details=rag_pb2.ScoreDetails(
            vector_score=d.vector_score,
            vector_rank=d.vector_rank,
            lexical_score=d.lexical_score,
            lexical_rank=d.lexical_rank,
            fusion_score=d.fusion_score,
            rerank_score=d.rerank_score,
        ),
        citation=citation_to_proto(answers.citation_for(number, result)),
    )


# -- ingestions


def _progress(p: ing.IngestionProgress) -> rag_pb2.IngestionProgress:
    return rag_pb2.IngestionProgress(
        documents_total=p.documents_total,
        documents_done=p.documents_done,
        documents_failed=p.documents_failed,
        chunks_total=p.chunks_total,
        chunks_done=p.chunks_done,
    )


def ingestion_document_to_proto(d: ing.IngestionDocumentState) -> rag_pb2.IngestionDocument:
    out = rag_pb2.IngestionDocument(
        document_id=d.document_id,
        file_name=d.file_name,
        status=INGESTION_DOC_STATUS_TO[d.status],
        chunks_total=d.chunks_total,
        chunks_done=d.chunks_done,
        page_count=d.page_count,
    )
    if d.error is not None:
        out.error.CopyFrom(_run_error(d.error))
    return out


def ingestion_to_proto(
    record: ing.IngestionRecord, last_event_id: int = 0, *, documents: bool = True
) -> rag_pb2.Ingestion:
    out = rag_pb2.Ingestion(
        id=record.id,
        index_name=record.index_name,
        status=INGESTION_STATUS_TO[record.status],
        progress=_progress(record.progress),
        chunking=chunking_to_proto(record.chunking),
        last_event_id=last_event_id,
        temporal_workflow_id=record.workflow_id,
    )
    if documents:
        out.documents.extend(ingestion_document_to_proto(d) for d in record.documents)
    if record.error is not None:
        out.error.CopyFrom(_run_error(record.error))
    set_timestamp(out.create_time, record.create_time)
    if record.start_time:
        set_timestamp(out.start_time, record.start_time)
    if record.end_time:
        set_timestamp(out.end_time, record.end_time)
    return out


def ingestion_event_to_proto(
    ingestion_id: str, event_id: int, event: ing.IngestionEvent
) -> rag_pb2.IngestionEvent:
    out = rag_pb2.IngestionEvent(
        event_id=event_id, ingestion_id=ingestion_id, progress=_progress(event.progress)
    )
    set_timestamp(out.time, event.time)
    if event.type == "finished" and event.record is not None:
        out.finished.CopyFrom(ingestion_to_proto(event.record, event_id))
    elif event.type == "document" and event.document is not None:
        out.document.CopyFrom(ingestion_document_to_proto(event.document))
    else:
        out.progress_changed.document_id = event.document_id
    return out


# -- answers


def answer_to_proto(record: answers.AnswerRecord, last_event_id: int = 0) -> rag_pb2.RagAnswer:
    out = rag_pb2.RagAnswer(
        id=record.id,
        index_name=record.index_name,
        query=record.query,
        status=RUN_STATUS_TO[record.status],
        text=record.text,
        citations=[citation_to_proto(c) for c in record.citations],
        context=[scored_to_proto(c, i + 1) for i, c in enumerate(record.context)],
        usage=usage_to_proto(record.usage),
        model=record.model,
        last_event_id=last_event_id,
        temporal_workflow_id=record.workflow_id,
    )
    if record.error is not None:
        out.error.CopyFrom(_run_error(record.error))
    set_timestamp(out.create_time, record.create_time)
    if record.end_time:
        set_timestamp(out.end_time, record.end_time)
    return out


def answer_event_to_proto(
    answer_id: str, event_id: int, event: answers.AnswerEvent
) -> rag_pb2.AnswerEvent:
    out = rag_pb2.AnswerEvent(event_id=event_id, answer_id=answer_id)
    set_timestamp(out.time, event.time)
    if event.type == "started":
        out.started.CopyFrom(
            rag_pb2.AnswerStarted(index_name=event.index_name, query=event.query, model=event.model)
        )
    elif event.type == "retrieval":
        out.retrieval.CopyFrom(
            rag_pb2.AnswerRetrieval(
                chunks=[scored_to_proto(c, i + 1) for i, c in enumerate(event.chunks)],
                retrieved_count=event.retrieved_count,
                context_tokens=event.context_tokens,
            )
        )
    elif event.type == "text_delta":
        out.text_delta.text = event.text
    elif event.type == "citation" and event.citation is not None:
        out.citation.CopyFrom(citation_to_proto(event.citation))
    elif event.type == "usage" and event.usage is not None:
        out.usage.CopyFrom(usage_to_proto(event.usage))
    elif event.type == "retrying":
        out.retrying.attempt = event.attempt
        if event.error is not None:
            out.retrying.error.CopyFrom(_run_error(event.error))
        if event.backoff_seconds is not None:
            out.retrying.backoff.FromTimedelta(timedelta(seconds=event.backoff_seconds))
    elif event.type == "failed":
        error = event.error or answers.AnswerError(code=13, reason="ANSWER_FAILED", message="")
        out.failed.CopyFrom(_run_error(error))
    elif event.record is not None:
        out.finished.CopyFrom(answer_to_proto(event.record, event_id))
    return out


def answer_request_from_proto(
    request: rag_pb2.AnswerRequest, tenant: str, answer_id: str
) -> answers.AnswerRequest:
    """The answer an Answer call asks for, every field checked (problems reported together)."""
    problems = Violations()
    if not request.index_name:
        problems.add("index_name", "is required")
    if not request.query.strip():
        problems.add("query", "is required")
    elif len(request.query) > MAX_QUERY_CHARS:
        problems.add("query", f"at most {MAX_QUERY_CHARS} characters")
    if request.client_answer_id and not is_valid_client_id(request.client_answer_id):
        problems.add("client_answer_id", f"must be {CLIENT_ID_RULE}")
    if len(request.model) > 256:
        problems.add("model", "at most 256 characters")
    if len(request.instructions) > 100_000:
        problems.add("instructions", "at most 100000 characters")
    max_tokens = request.context.max_tokens or 4000
    if not 100 <= max_tokens <= 1_000_000:
        problems.add("context.max_tokens", "must be 100..1000000 (0 means 4000)")
    settings = request.model_settings
    if settings.HasField("temperature") and not 0 <= settings.temperature <= 2:
        problems.add("model_settings.temperature", "must be 0..2")
    if settings.HasField("top_p") and not 0 <= settings.top_p <= 1:
        problems.add("model_settings.top_p", "must be 0..1")
    if settings.HasField("max_output_tokens") and not 1 <= settings.max_output_tokens <= 200000:
        problems.add("model_settings.max_output_tokens", "must be 1..200000")
    problems.raise_if_any()
    validate_index_name(request.index_name)
    return answers.AnswerRequest(
        tenant=tenant,
        answer_id=answer_id,
        index_name=request.index_name,
        query=request.query,
        retrieval=validate_retrieval(retrieval_from_proto(request.retrieval)),
        max_context_tokens=max_tokens,
        order=context_order_from_proto(request.context.order),
        model=request.model,
        instructions=request.instructions,
        temperature=settings.temperature if settings.HasField("temperature") else None,
        max_output_tokens=settings.max_output_tokens
        if settings.HasField("max_output_tokens")
        else None,
    )
