-- MCP servers as tool sources: a tenant's servers (streamable HTTP) with their headers
-- encrypted (Fernet, key LOOMWORK_SECRET_KEY), and the tool lists cached for every server,
-- the operator's stdio servers (LOOMWORK_MCP_SERVERS) included.

create table mcp_servers (
    tenant_id text not null,
    name text not null,
    url text not null,
    -- A JSON object of header names and values, encrypted; null when there are none.
    headers_enc bytea,
    oauth_connection_id text not null default '',
    -- The tools as last listed: [{name, description, input_schema}].
    tools jsonb not null default '[]',
    list_time timestamptz not null default now(),
    create_time timestamptz not null default now(),
    primary key (tenant_id, name)
);

-- The operator's servers are configured per process, not stored: only their tool lists are,
-- with a fingerprint of the configuration they were listed with (a changed command lists
-- again).
create table mcp_operator_tools (
    name text primary key,
    fingerprint text not null,
    tools jsonb not null default '[]',
    list_time timestamptz not null default now()
);
