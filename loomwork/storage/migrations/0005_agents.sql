-- Agents created by RPC (AgentService.CreateAgent), one set per tenant. The definition is
-- the domain model's JSON (loomwork.agents.definitions.AgentDefinition); agents defined in
-- code live in the worker and are not stored.
create table agents (
    tenant_id text not null,
    name text not null,
    definition jsonb not null,
    create_time timestamptz not null default now(),
    update_time timestamptz not null default now(),
    primary key (tenant_id, name)
);
