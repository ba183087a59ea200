-- The parts of a document being uploaded (UploadDocument), written as they arrive so a
-- server never holds a whole upload in memory; assembled into rag_sources in one statement
-- when the upload completes, and deleted then (or when the upload is abandoned).
create table rag_upload_parts (
    tenant_id text not null,
    upload_id text not null,
    seq integer not null,
    content bytea not null,
    primary key (tenant_id, upload_id, seq)
);
