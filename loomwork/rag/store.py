"""Indexes, documents and chunks in Postgres + pgvector, per tenant.

Each index gets a partial HNSW index over `embedding::vector(<dimension>)` with its
metric's operator class (`rag_chunks_hnsw_<id>`), so indexes of different models and
dimensions share one table. A document's chunks change only in `commit_document`,
one transaction: a changed document's chunks are replaced atomically.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from psycopg import errors as pg_errors

from loomwork.errors import AlreadyExists, InvalidArgument, NotFound, Violations
from loomwork.paging import decode_page_token, encode_page_token
from loomwork.rag.code_tokens import code_lexemes
from loomwork.rag.filters import DOCUMENT_FIELDS, compile_filter, validate_filter
from loomwork.rag.models import (
    Chunk,
    DocumentError,
    DocumentFormat,
    DocumentRecord,
    Filter,
    Index,
    IndexSpec,
    Metric,
)
from loomwork.storage.database import Database

__all__ = ["OPCLASS", "OPERATOR", "RagStore", "validate_index_name", "vector_literal"]

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
NAME_RULE = "1..64 characters of [A-Za-z0-9_-], starting with a letter"
OPCLASS = {
    Metric.COSINE: "vector_cosine_ops",
    Metric.L2: "vector_l2_ops",
    Metric.INNER_PRODUCT: "vector_ip_ops",
}
OPERATOR = {Metric.COSINE: "<=>", Metric.L2: "<->", Metric.INNER_PRODUCT: "<#>"}
_INDEX_COLUMNS = """
    i.id, i.tenant_id, i.name, i.description, i.embedding_model, i.dimension, i.metric,
    i.hnsw_m, i.hnsw_ef_construction, i.text_search_config, i.metadata, i.create_time,
    i.update_time
"""
# The counters, from the documents (a document records how many chunks it committed with
# them): the index's chunks are never counted, which took 35 ms at 50k chunks.
_COUNT_COLUMNS = """
    (select count(*) from rag_documents d where d.index_id = i.id) as document_count,
    (select coalesce(sum(d.chunk_count), 0) from rag_documents d where d.index_id = i.id)
        as chunk_count
"""
_NO_COUNT_COLUMNS = "0 as document_count, 0 as chunk_count"
_DOC_COLUMNS = """
    id, title, file_name, source_uri, format, metadata, content_hash, size_bytes,
    page_count, chunk_count, status, error, ingestion_id, create_time, update_time
"""


def validate_index_name(name: str, field: str = "index_name") -> None:
    if not name:
        raise InvalidArgument.field(field, "is required")
    if not NAME.match(name):
        raise InvalidArgument.field(field, f"must be {NAME_RULE}")


def vector_literal(values: Sequence[float]) -> str:
    """pgvector's text form, bound as a parameter and cast with `::vector`."""
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def _index(row: dict[str, Any]) -> Index:
    return Index(
        id=row["id"],
        tenant=row["tenant_id"],
        name=row["name"],
        description=row["description"],
        embedding_model=row["embedding_model"],
        dimension=row["dimension"],
        metric=Metric(row["metric"]),
        hnsw_m=row["hnsw_m"],
        hnsw_ef_construction=row["hnsw_ef_construction"],
        text_search_config=row["text_search_config"],
        metadata=row["metadata"] or {},
        document_count=row["document_count"],
        chunk_count=row["chunk_count"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


def _document(row: dict[str, Any], index_name: str) -> DocumentRecord:
    return DocumentRecord(
        id=row["id"],
        index_name=index_name,
        title=row["title"],
        file_name=row["file_name"],
        source_uri=row["source_uri"],
        format=DocumentFormat(row["format"]),
        metadata=row["metadata"] or {},
        content_hash=row["content_hash"],
        size_bytes=row["size_bytes"],
        page_count=row["page_count"],
        chunk_count=row["chunk_count"],
        status=row["status"],
        error=DocumentError.model_validate(row["error"]) if row["error"] else None,
        ingestion_id=row["ingestion_id"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


class RagStore:
    """CRUD of indexes and documents, and the atomic chunk replacement of a document."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- indexes

    async def create_index(self, tenant: str, spec: IndexSpec) -> Index:
        """Create the index and its HNSW index; AlreadyExists if the name is taken."""
        validate_index_name(spec.name, "index.name")
        async with self.db.connection() as conn, conn.transaction():
            try:
                cur = await conn.execute(
                    """
                    insert into rag_indexes (tenant_id, name, description, embedding_model,
                        dimension, metric, hnsw_m, hnsw_ef_construction, text_search_config,
                        metadata)
                    values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                    returning id
                    """,
                    (
                        tenant,
                        spec.name,
                        spec.description,
                        spec.embedding_model,
                        spec.dimension,
                        spec.metric.value,
                        spec.hnsw_m,
                        spec.hnsw_ef_construction,
                        spec.text_search_config,
                        json.dumps(spec.metadata),
                    ),
                )
            except pg_errors.UniqueViolation as exc:
                raise AlreadyExists(f"index {spec.name!r} already exists") from exc
            row = await cur.fetchone()
            assert row is not None
            index_id = int(row["id"])
            await conn.execute(
                f"""
                create index rag_chunks_hnsw_{index_id} on rag_chunks using hnsw
                    ((embedding::vector({int(spec.dimension)})) {OPCLASS[spec.metric]})
                with (m = {int(spec.hnsw_m)}, ef_construction = {int(spec.hnsw_ef_construction)})
                where index_id = {index_id}
                """
            )
        return await self.get_index(tenant, spec.name)

    async def get_index(self, tenant: str, name: str, *, counts: bool = True) -> Index:
        """The tenant's index; `counts=False` leaves its counters 0, for the paths that use
        only its settings (searches, ingestion batches): counting grows with the index."""
        validate_index_name(name)
        counters = _COUNT_COLUMNS if counts else _NO_COUNT_COLUMNS
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"select {_INDEX_COLUMNS}, {counters} from rag_indexes i"
                " where i.tenant_id = %s and i.name = %s",
                (tenant, name),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"index {name!r} not found")
        return _index(row)

    async def list_indexes(
        self, tenant: str, *, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[Index], str]:
        """Indexes ordered by name, and the next page token ('' at the end)."""
        cursor = decode_page_token(page_token, f"indexes:{tenant}")
        after = ""
        if cursor is not None:
            async with self.db.connection() as conn:
                cur = await conn.execute(
                    "select name from rag_indexes where id = %s and tenant_id = %s",
                    (cursor, tenant),
                )
                row = await cur.fetchone()
                after = row["name"] if row else ""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"""
                select {_INDEX_COLUMNS}, {_COUNT_COLUMNS} from rag_indexes i
                where i.tenant_id = %s and i.name > %s order by i.name limit %s
                """,
                (tenant, after, page_size + 1),
            )
            rows = await cur.fetchall()
        items = [_index(r) for r in rows[:page_size]]
        token = ""
        if len(rows) > page_size:
            token = encode_page_token(items[-1].id, f"indexes:{tenant}")
        return items, token

    async def delete_index(self, tenant: str, name: str) -> Index:
        index = await self.get_index(tenant, name)
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute(f"drop index if exists rag_chunks_hnsw_{index.id}")
            await conn.execute("delete from rag_chunks where index_id = %s", (index.id,))
            await conn.execute("delete from rag_indexes where id = %s", (index.id,))
        return index

    # -- documents

    async def get_document(self, tenant: str, index_name: str, document_id: str) -> DocumentRecord:
        index = await self.get_index(tenant, index_name)
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"select {_DOC_COLUMNS} from rag_documents where index_id = %s and id = %s",
                (index.id, document_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"document {document_id!r} not found in index {index_name!r}")
        return _document(row, index_name)

    async def list_documents(
        self,
        tenant: str,
        index_name: str,
        *,
        page_size: int = 50,
        page_token: str = "",
        filter: Filter | None = None,
        statuses: Sequence[str] = (),
    ) -> tuple[list[DocumentRecord], str]:
        """Documents ordered by id, optionally filtered, and the next page token."""
        validate_filter(filter, DOCUMENT_FIELDS)
        index = await self.get_index(tenant, index_name)
        scope = f"documents:{tenant}:{index_name}:{filter}:{sorted(statuses)}"
        cursor = decode_page_token(page_token, scope)
        params: list[Any] = [index.id]
        where = compile_filter(filter, DOCUMENT_FIELDS, params)
        status_sql = "true"
        if statuses:
            status_sql = "status = any(%s)"
            params.append(list(statuses))
        offset = cursor or 0
        params.extend([offset, page_size + 1])
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"""
                select {_DOC_COLUMNS} from rag_documents
                where index_id = %s and {where} and {status_sql}
                order by id offset %s limit %s
                """,
                params,
            )
            rows = await cur.fetchall()
        items = [_document(r, index_name) for r in rows[:page_size]]
        token = encode_page_token(offset + page_size, scope) if len(rows) > page_size else ""
        return items, token

    async def delete_document(self, tenant: str, index_name: str, document_id: str) -> None:
        index = await self.get_index(tenant, index_name)
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "delete from rag_documents where index_id = %s and id = %s returning id",
                (index.id, document_id),
            )
            if await cur.fetchone() is None:
                raise NotFound(f"document {document_id!r} not found in index {index_name!r}")
            await conn.execute(
                "update rag_indexes set update_time = now() where id = %s", (index.id,)
            )

    async def stored_hash(self, index_id: int, document_id: str) -> tuple[str, str] | None:
        """(content hash, status) of a stored document, or None."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "select content_hash, status from rag_documents where index_id = %s and id = %s",
                (index_id, document_id),
            )
            row = await cur.fetchone()
        return (row["content_hash"], row["status"]) if row else None

    async def begin_document(self, index_id: int, record: DocumentRecord) -> None:
        """Record a document about to be ingested: PROCESSING if new; a stored one keeps
        its chunks and status until `commit_document`."""
        async with self.db.connection() as conn:
            await conn.execute(
                """
                insert into rag_documents (index_id, id, title, file_name, source_uri, format,
                    metadata, status, ingestion_id)
                values (%s, %s, %s, %s, %s, %s, %s, 'processing', %s)
                on conflict (index_id, id) do update set ingestion_id = excluded.ingestion_id
                """,
                (
                    index_id,
                    record.id,
                    record.title,
                    record.file_name,
                    record.source_uri,
                    record.format.value,
                    json.dumps(record.metadata),
                    record.ingestion_id,
                ),
            )

    async def fail_document(
        self, index_id: int, document_id: str, error: DocumentError, ingestion_id: str
    ) -> None:
        """A failed first ingestion marks the document FAILED; a stored one stays READY."""
        async with self.db.connection() as conn:
            await conn.execute(
                """
                update rag_documents set error = %s, ingestion_id = %s,
                    status = case when status = 'ready' then 'ready' else 'failed' end
                where index_id = %s and id = %s
                """,
                (error.model_dump_json(), ingestion_id, index_id, document_id),
            )

    async def commit_document(
        self,
        index: Index,
        record: DocumentRecord,
        chunks: Sequence[Chunk],
        embeddings: Sequence[str],
    ) -> None:
        """Replace the document's chunks and record, in one transaction.

        `embeddings` are pgvector text literals (`vector_literal`), one per chunk.
        """
        if len(chunks) != len(embeddings):
            raise ValueError("one embedding per chunk")
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute(
                """
                insert into rag_documents (index_id, id, title, file_name, source_uri, format,
                    metadata, content_hash, size_bytes, page_count, chunk_count, status,
                    error, ingestion_id)
                values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'ready', null, %s)
                on conflict (index_id, id) do update set
                    title = excluded.title, file_name = excluded.file_name,
                    source_uri = excluded.source_uri, format = excluded.format,
                    metadata = excluded.metadata, content_hash = excluded.content_hash,
                    size_bytes = excluded.size_bytes, page_count = excluded.page_count,
                    chunk_count = excluded.chunk_count, status = 'ready', error = null,
                    ingestion_id = excluded.ingestion_id, update_time = now()
                """,
                (
                    index.id,
                    record.id,
                    record.title,
                    record.file_name,
                    record.source_uri,
                    record.format.value,
                    json.dumps(record.metadata),
                    record.content_hash,
                    record.size_bytes,
                    record.page_count,
                    len(chunks),
                    record.ingestion_id,
                ),
            )
            await conn.execute(
                "delete from rag_chunks where index_id = %s and document_id = %s",
                (index.id, record.id),
            )
            async with conn.cursor() as cur:
                await cur.executemany(
                    """
                    insert into rag_chunks (index_id, document_id, position, id, text, page,
                        end_page, heading_path, start_char, end_char, token_count, format,
                        metadata, embedding, tsv)
                    values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::vector,
                        to_tsvector(%s::regconfig, %s) || array_to_tsvector(%s::text[]))
                    """,
                    [
                        (
                            index.id,
                            record.id,
                            c.position,
                            c.id,
                            c.text,
                            c.page,
                            c.end_page,
                            c.heading_path,
                            c.start_char,
                            c.end_char,
                            c.token_count,
                            record.format.value,
                            json.dumps(c.metadata),
                            vector,
                            index.text_search_config,
                            " ".join([*c.heading_path, c.text]),
                            code_lexemes(" ".join([*c.heading_path, c.text])),
                        )
                        for c, vector in zip(chunks, embeddings, strict=True)
                    ],
                )
            await conn.execute(
                "update rag_indexes set update_time = now() where id = %s", (index.id,)
            )

    async def text_search_config_exists(self, name: str) -> bool:
        async with self.db.connection() as conn:
            cur = await conn.execute("select 1 from pg_ts_config where cfgname = %s", (name,))
            return await cur.fetchone() is not None


def check_index_spec(spec: IndexSpec) -> None:
    """Field checks that need no database (the dimension is checked against the model)."""
    problems = Violations()
    if not spec.name:
        problems.add("index.name", "is required")
    elif not NAME.match(spec.name):
        problems.add("index.name", f"must be {NAME_RULE}")
    if len(spec.description) > 1024:
        problems.add("index.description", "at most 1024 characters")
    if len(spec.embedding_model) > 256:
        problems.add("index.embedding_model", "at most 256 characters")
    if not 0 <= spec.dimension <= 4000:
        problems.add("index.dimension", "must be 1..4000 (0 means the model's)")
    if not 2 <= spec.hnsw_m <= 100:
        problems.add("index.hnsw.m", "must be 2..100 (0 means 16)")
    if not 4 <= spec.hnsw_ef_construction <= 1000:
        problems.add("index.hnsw.ef_construction", "must be 4..1000 (0 means 64)")
    elif spec.hnsw_ef_construction < 2 * spec.hnsw_m:
        problems.add("index.hnsw.ef_construction", "must be at least 2 * m")
    if not re.match(r"^[a-z_]{1,63}$", spec.text_search_config):
        problems.add("index.text_search_config", "must be a Postgres text search configuration")
    problems.raise_if_any()
