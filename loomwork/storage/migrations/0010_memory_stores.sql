-- Memory may live in another store than PostgreSQL (LOOMWORK_MEMORY_STORE), while the
-- vectors of semantic recall stay here: they can no longer reference `messages`.
-- (The vector table is created at start-up; a fresh database has none yet.)
alter table if exists message_embeddings
    drop constraint if exists message_embeddings_tenant_id_message_id_fkey;

-- Working memory counts its writes: its etag, for optimistic concurrency.
alter table working_memory add column version bigint not null default 1;

-- Settings a deployment must keep once chosen (the memory store), recorded at start.
create table loomwork_settings (
    name text primary key,
    value text not null,
    update_time timestamptz not null default now()
);
