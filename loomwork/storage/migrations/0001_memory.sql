-- Threads and messages of conversation memory, scoped by tenant.
create extension if not exists vector;

create table threads (
    tenant_id text not null,
    id text not null,
    seq bigint generated always as identity,
    resource_id text not null default '',
    title text not null default '',
    metadata jsonb not null default '{}'::jsonb,
    message_count bigint not null default 0,
    create_time timestamptz not null default now(),
    update_time timestamptz not null default now(),
    primary key (tenant_id, id)
);

create index threads_by_tenant on threads (tenant_id, seq desc);
create index threads_by_resource on threads (tenant_id, resource_id, seq desc);

-- `content` holds the message's parts and metadata through loomwork.storage.codec
-- (JSON, zstd-compressed above a size threshold).
create table messages (
    tenant_id text not null,
    id text not null,
    thread_id text not null,
    seq bigint generated always as identity,
    role text not null,
    content bytea not null,
    create_time timestamptz not null default now(),
    primary key (tenant_id, id),
    foreign key (tenant_id, thread_id) references threads (tenant_id, id) on delete cascade
);

create index messages_by_thread on messages (tenant_id, thread_id, seq);
