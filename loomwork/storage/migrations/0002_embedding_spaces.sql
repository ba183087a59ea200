-- Which embedding model (and so which vector dimension) each vector table holds.
-- The vector tables themselves are created at start-up by their owners, with the
-- dimension of the configured model; a different model on existing data is refused.
create table embedding_spaces (
    space text primary key,
    model text not null,
    dimension integer not null check (dimension > 0),
    create_time timestamptz not null default now()
);
