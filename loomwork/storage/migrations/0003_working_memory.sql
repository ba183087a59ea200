-- Working memory: what an agent keeps about one thread or one resource.
-- Thread-scoped rows reference their thread, so deleting the thread removes them.
create table working_memory (
    tenant_id text not null,
    scope text not null check (scope in ('thread', 'resource')),
    owner_id text not null,
    thread_id text,
    markdown text not null default '',
    data jsonb,
    update_time timestamptz not null default now(),
    primary key (tenant_id, scope, owner_id),
    check ((scope = 'thread') = (thread_id is not null)),
    foreign key (tenant_id, thread_id) references threads (tenant_id, id) on delete cascade
);
