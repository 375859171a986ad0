-- The durable job queue (DESIGN.md §3). All of onboard's tables live in the `onboard` schema.
create schema if not exists onboard;

create type onboard.job_state as enum (
    'available', 'scheduled', 'running', 'retryable', 'completed', 'cancelled', 'discarded'
);

create table onboard.job (
    id               bigint generated always as identity primary key,
    queue            text        not null default 'default',
    kind             text        not null,
    args             jsonb       not null default '{}',
    state            onboard.job_state not null default 'available',
    priority         smallint    not null default 0,
    attempt          integer     not null default 0,
    max_attempts     integer     not null default 20,
    run_at           timestamptz not null default now(),
    created_at       timestamptz not null default now(),
    attempted_at     timestamptz,
    finalized_at     timestamptz,
    lease_owner      text,
    lease_expires_at timestamptz,
    cancel_requested boolean     not null default false,
    unique_key       text,
    -- true: the unique key also stays taken by a completed job (a kind's choice).
    unique_completed boolean     not null default false,
    errors           jsonb[]     not null default '{}',
    constraint job_attempt_bounds check (attempt >= 0 and max_attempts >= 1)
);

-- Fetch: runnable rows only, in fetch order. Finished rows never enter it.
create index job_fetch_idx on onboard.job (queue, priority, run_at, id)
    where state in ('available', 'scheduled', 'retryable');
-- The earliest future run_at per queue (the wake-up timer): only rows waiting on time.
create index job_waiting_idx on onboard.job (queue, run_at)
    where state in ('scheduled', 'retryable');
-- Running rows: lease reaper, per-queue running caps.
create index job_running_idx on onboard.job (queue, lease_expires_at)
    where state = 'running';
-- Retention and the dashboard's finished lists.
create index job_finalized_idx on onboard.job (state, finalized_at)
    where finalized_at is not null;
-- Unique keys among live jobs (and completed ones where the kind widens it).
create unique index job_unique_key_idx on onboard.job (unique_key)
    where unique_key is not null
      and (state in ('available', 'scheduled', 'running', 'retryable')
           or (unique_completed and state = 'completed'));

alter table onboard.job set (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    fillfactor = 90
);

-- One NOTIFY per queue per statement; PostgreSQL folds identical notifications within a
-- transaction, so a transaction that enqueues many jobs notifies each queue once.
--
-- A committing transaction that has notified takes a cluster-wide lock and holds it through
-- its WAL flush, which serialises such commits and defeats group commit. A high-rate producer
-- that wakes the listeners itself, coalesced (the ingress: `jobs::notify::Coalescer`), runs
-- `set_config('onboard.notify', 'off', true)` in the statement that enqueues; this trigger then
-- skips the NOTIFY. The `off` is consumed by the first firing after it, so later statements of
-- the same transaction notify as usual. An unset or other value notifies, as always.
create function onboard.job_notify() returns trigger language plpgsql as $$
declare q text;
begin
    if current_setting('onboard.notify', true) = 'off' then
        perform set_config('onboard.notify', '', true);
        return null;
    end if;
    for q in select distinct queue from new_rows loop
        perform pg_notify('onboard_job', q);
    end loop;
    return null;
end $$;

create trigger job_notify after insert on onboard.job
    referencing new table as new_rows
    for each statement execute function onboard.job_notify();

-- Per-queue settings: pause, cap on running jobs across all workers, start rate (token bucket).
create table onboard.queue (
    name            text primary key,
    paused          boolean     not null default false,
    max_running     integer check (max_running is null or max_running > 0),
    max_per_second  double precision check (max_per_second is null or max_per_second > 0),
    tokens          double precision not null default 0,
    tokens_at       timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);

-- Live worker processes (one row per backend instance), for the dashboard.
create table onboard.worker (
    id           text primary key,
    queue        text        not null,
    hostname     text        not null,
    pid          integer     not null,
    started_at   timestamptz not null default now(),
    heartbeat_at timestamptz not null default now()
);

-- Periodic jobs: one row per schedule; a tick is claimed by a guarded update.
create table onboard.periodic (
    name        text primary key,
    next_run_at timestamptz not null,
    updated_at  timestamptz not null default now()
);
