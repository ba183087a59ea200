-- RAG: vector indexes, documents and their chunks, ingestion and answer records.
--
-- One chunks table holds every index: `embedding` has no fixed dimension, and each
-- index gets its own partial HNSW index on `(embedding::vector(<dim>))` with its
-- metric's operator class, created by CreateIndex (`rag_chunks_hnsw_<index id>`).
-- Full-text search uses `tsv`, computed at insert with the index's text search config.
create table rag_indexes (
    id bigint generated always as identity unique,
    tenant_id text not null,
    name text not null,
    description text not null default '',
    embedding_model text not null,
    dimension integer not null check (dimension between 1 and 4000),
    metric text not null,
    hnsw_m integer not null,
    hnsw_ef_construction integer not null,
    text_search_config text not null,
    metadata jsonb not null default '{}',
    create_time timestamptz not null default now(),
    update_time timestamptz not null default now(),
    primary key (tenant_id, name)
);

create table rag_documents (
    index_id bigint not null references rag_indexes (id) on delete cascade,
    id text not null,
    title text not null default '',
    file_name text not null default '',
    source_uri text not null default '',
    format text not null,
    metadata jsonb not null default '{}',
    content_hash text not null default '',
    size_bytes bigint not null default 0,
    page_count integer not null default 0,
    chunk_count integer not null default 0,
    status text not null,
    error jsonb,
    ingestion_id text not null default '',
    create_time timestamptz not null default now(),
    update_time timestamptz not null default now(),
    primary key (index_id, id)
);

create table rag_chunks (
    index_id bigint not null,
    document_id text not null,
    position integer not null,
    id text not null,
    text text not null,
    page integer not null default 0,
    end_page integer not null default 0,
    heading_path text[] not null default '{}',
    start_char integer not null default 0,
    end_char integer not null default 0,
    token_count integer not null default 0,
    format text not null default '',
    metadata jsonb not null default '{}',
    embedding vector not null,
    tsv tsvector not null,
    primary key (index_id, document_id, position),
    foreign key (index_id, document_id) references rag_documents (index_id, id) on delete cascade
);
create index rag_chunks_tsv on rag_chunks using gin (tsv);
create index rag_chunks_by_id on rag_chunks (index_id, id);

-- Ingestion records: the whole record as JSON, updated by the ingestion's activities.
create table rag_ingestions (
    seq bigint generated always as identity,
    tenant_id text not null,
    id text not null,
    index_name text not null,
    status text not null,
    record jsonb not null,
    create_time timestamptz not null default now(),
    primary key (tenant_id, id)
);
create index rag_ingestions_newest on rag_ingestions (tenant_id, seq desc);

-- The bytes of an ingestion's documents until they are ingested (Temporal payloads
-- stay small: the workflow carries only references).
create table rag_sources (
    tenant_id text not null,
    ingestion_id text not null,
    ordinal integer not null,
    content bytea not null,
    primary key (tenant_id, ingestion_id, ordinal)
);

-- Chunks of a document being ingested: embedded batch by batch, then moved into
-- rag_chunks in one transaction (a changed document's chunks are replaced atomically).
create table rag_staged_chunks (
    tenant_id text not null,
    ingestion_id text not null,
    document_id text not null,
    position integer not null,
    chunk jsonb not null,
    embedding vector,
    primary key (tenant_id, ingestion_id, document_id, position)
);

-- Answer runs: the record as JSON, updated by the answer's activities.
create table rag_answers (
    tenant_id text not null,
    id text not null,
    index_name text not null,
    record jsonb not null,
    create_time timestamptz not null default now(),
    primary key (tenant_id, id)
);
