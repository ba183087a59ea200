-- The highest event id each run's event log may have given out (its Redis log reserves
-- ids in blocks below this): after Redis lost a log, its ids continue above it, so no id a
-- watcher saw is given to another event (loomwork/storage/event_ceilings.py).
create table run_event_ceilings (
    log_key text primary key,
    ceiling bigint not null,
    updated_at timestamptz not null default now()
);

create index run_event_ceilings_by_age on run_event_ceilings (updated_at);
