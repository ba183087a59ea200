-- Messages stored whose indexing for semantic recall could not be started (Temporal
-- unreachable): kept until a sweep starts it (loomwork/memory/index_backlog.py).
create table message_index_backlog (
    tenant_id text not null,
    message_id text not null,
    thread_id text not null,
    since timestamptz not null default now(),
    primary key (tenant_id, message_id)
);

create index message_index_backlog_by_age on message_index_backlog (since);
