-- Notes written by the built-in `save_note` tool. The idempotency key (run id + tool call
-- id) makes the write exactly-once even when the tool's activity is retried.
create table notes (
    tenant_id text not null,
    id bigint generated always as identity,
    idempotency_key text not null,
    thread_id text not null default '',
    title text not null,
    body text not null,
    create_time timestamptz not null default now(),
    primary key (tenant_id, id),
    unique (tenant_id, idempotency_key)
);
