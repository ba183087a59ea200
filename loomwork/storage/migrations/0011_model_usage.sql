-- Usage and cost: one row per model call of a run (an agent run's step, a RAG answer's
-- answer or rerank), written by the activity that made the call; a retried attempt of the
-- same call writes the same row again (its key names the call, not the attempt).
create table model_usage (
    tenant_id text not null,
    run_id text not null,
    -- Which call of the run: `step:<n>` for an agent step, `answer` / `rerank` for an answer.
    call_key text not null,
    -- `agent` (agent runs, workflow agent steps and sub-agents among them) or `answer`.
    run_kind text not null,
    agent_name text not null default '',
    model text not null,
    input_tokens bigint not null default 0,
    -- Input tokens the model served from its prompt cache (a part of input_tokens).
    cached_tokens bigint not null default 0,
    output_tokens bigint not null default 0,
    -- The attempt whose figures the row holds: an older attempt never overwrites a newer one.
    attempt integer not null default 1,
    create_time timestamptz not null default now(),
    primary key (tenant_id, run_id, call_key)
);

-- A tenant's calls over a time range (ListUsage), and its tokens today (the tokens_per_day
-- quota, summed from the index alone).
create index model_usage_by_time on model_usage (tenant_id, create_time)
    include (input_tokens, output_tokens);

-- Runs that hold one of their tenant's concurrent-run slots (quota `concurrent_runs`): taken
-- as a run is started by RPC, given back once Temporal says its workflow has closed (checked
-- when the tenant reaches its limit).
create table run_slots (
    tenant_id text not null,
    -- The run's Temporal workflow id (unique across agent runs, workflow runs and answers).
    workflow_id text not null,
    create_time timestamptz not null default now(),
    primary key (tenant_id, workflow_id)
);
