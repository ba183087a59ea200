-- Integrations: webhook sources and their deliveries, OAuth providers and connections.
-- Secrets and tokens are stored encrypted (Fernet, key LOOMWORK_SECRET_KEY): *_enc columns.

-- Source ids are generated (whs_...) and unique across tenants: the HTTP path names only them.
create table webhook_sources (
    id text primary key,
    tenant_id text not null,
    seq bigint generated always as identity,
    display_name text not null default '',
    secret_enc bytea not null,
    signature_header text not null,
    delivery_id_header text not null,
    event_type_header text not null,
    tolerance_seconds integer not null,
    routes jsonb not null default '[]',
    create_time timestamptz not null default now()
);
create index webhook_sources_tenant on webhook_sources (tenant_id, seq desc);

-- One row per accepted delivery, unique per source: re-deliveries never route twice.
create table webhook_deliveries (
    source_id text not null,
    id text not null,
    tenant_id text not null,
    seq bigint generated always as identity,
    event_type text not null default '',
    payload jsonb not null,
    status text not null default 'received',
    route_name text not null default '',
    result text not null default '',
    workflow_id text not null,
    receive_time timestamptz not null default now(),
    route_time timestamptz,
    primary key (source_id, id)
);
create index webhook_deliveries_tenant on webhook_deliveries (tenant_id, seq desc);
create index webhook_deliveries_source on webhook_deliveries (tenant_id, source_id, seq desc);

create table oauth_providers (
    tenant_id text not null,
    id text not null,
    seq bigint generated always as identity,
    authorize_url text not null,
    token_url text not null,
    client_id text not null,
    client_secret_enc bytea not null,
    scopes text[] not null default '{}',
    create_time timestamptz not null default now(),
    primary key (tenant_id, id)
);

create table oauth_connections (
    tenant_id text not null,
    id text not null,
    seq bigint generated always as identity,
    provider_id text not null,
    status text not null default 'active',
    scopes text[] not null default '{}',
    label text not null default '',
    access_token_enc bytea not null,
    refresh_token_enc bytea,
    access_token_expire_time timestamptz,
    create_time timestamptz not null default now(),
    update_time timestamptz not null default now(),
    primary key (tenant_id, id),
    foreign key (tenant_id, provider_id) references oauth_providers (tenant_id, id)
        on delete cascade
);
create index oauth_connections_tenant on oauth_connections (tenant_id, seq desc);
