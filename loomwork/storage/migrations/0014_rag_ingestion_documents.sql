-- Each document of an ingestion in a row of its own (its state and its source as given),
-- and the ingestion's counters in columns changed in place: a batch's progress writes one
-- document row and one ingestion row, whatever the number of documents. The ingestion's
-- `record` keeps only the ingestion-level fields.
create table rag_ingestion_documents (
    tenant_id text not null,
    ingestion_id text not null,
    ordinal integer not null,
    document_id text not null,
    file_name text not null default '',
    status text not null default 'pending',
    chunks_total integer not null default 0,
    chunks_done integer not null default 0,
    page_count integer not null default 0,
    error jsonb,
    source jsonb not null,
    primary key (tenant_id, ingestion_id, ordinal)
);

alter table rag_ingestions
    add column documents_total integer not null default 0,
    add column documents_done integer not null default 0,
    add column documents_failed integer not null default 0,
    add column chunks_total bigint not null default 0,
    add column chunks_done bigint not null default 0;

-- Records stored before: their documents (and the sources beside them) move into rows,
-- their counters into the columns, and the record keeps the rest.
insert into rag_ingestion_documents (
    tenant_id, ingestion_id, ordinal, document_id, file_name, status,
    chunks_total, chunks_done, page_count, error, source
)
select
    i.tenant_id,
    i.id,
    (d.ordinality - 1)::integer,
    d.doc ->> 'document_id',
    coalesce(d.doc ->> 'file_name', ''),
    coalesce(d.doc ->> 'status', 'pending'),
    coalesce((d.doc ->> 'chunks_total')::integer, 0),
    coalesce((d.doc ->> 'chunks_done')::integer, 0),
    coalesce((d.doc ->> 'page_count')::integer, 0),
    case when jsonb_typeof(d.doc -> 'error') = 'object' then d.doc -> 'error' end,
    coalesce(
        i.record -> 'sources' -> (d.ordinality - 1)::integer,
        jsonb_build_object('document_id', d.doc ->> 'document_id')
    )
from rag_ingestions i,
    jsonb_array_elements(coalesce(i.record -> 'documents', '[]'::jsonb))
        with ordinality as d(doc, ordinality);

update rag_ingestions set
    documents_total = coalesce((record -> 'progress' ->> 'documents_total')::integer, 0),
    documents_done = coalesce((record -> 'progress' ->> 'documents_done')::integer, 0),
    documents_failed = coalesce((record -> 'progress' ->> 'documents_failed')::integer, 0),
    chunks_total = coalesce((record -> 'progress' ->> 'chunks_total')::bigint, 0),
    chunks_done = coalesce((record -> 'progress' ->> 'chunks_done')::bigint, 0),
    record = record - 'documents' - 'sources' - 'progress';
