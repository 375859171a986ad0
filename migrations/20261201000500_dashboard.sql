-- Operators of the dashboard and admin API: accounts, server-side sessions, API tokens, audit.

create table onboard.operator (
    id            bigint generated always as identity primary key,
    name          text        not null unique,
    role          text        not null check (role in ('viewer', 'operator')),
    -- PHC string of an argon2id hash.
    password_hash text        not null,
    created_at    timestamptz not null default now()
);

create table onboard.operator_session (
    -- SHA-256 of the cookie's secret: the secret itself is never stored.
    token_hash   bytea       primary key,
    operator_id  bigint      not null references onboard.operator (id) on delete cascade,
    csrf_token   text        not null,
    created_at   timestamptz not null default now(),
    expires_at   timestamptz not null
);
create index operator_session_operator_idx on onboard.operator_session (operator_id);

create table onboard.operator_token (
    id          bigint generated always as identity primary key,
    operator_id bigint      not null references onboard.operator (id) on delete cascade,
    prefix      text        not null unique,
    token_hash  bytea       not null,
    created_at  timestamptz not null default now(),
    revoked_at  timestamptz
);
create index operator_token_operator_idx on onboard.operator_token (operator_id);

create table onboard.audit (
    id        bigint generated always as identity primary key,
    at        timestamptz not null default now(),
    -- The operator's name (kept as text: the record outlives the account).
    operator  text        not null,
    action    text        not null,
    target    text        not null,
    result    text        not null,
    detail    jsonb       not null default '{}'
);
create index audit_at_idx on onboard.audit (at desc, id desc);

-- When an operator last set the queue's caps: built-in defaults never overwrite those.
alter table onboard.queue add column limits_set_at timestamptz;

-- The dashboard's lookups of a saga's jobs and of an inbox delivery's job (only rows whose args
-- carry the key are indexed), and of sagas by state.
create index job_onboarding_idx on onboard.job (((args->>'onboarding_id')::bigint), id)
    where args ? 'onboarding_id';
create index job_inbox_idx on onboard.job (((args->>'inbox_id')::bigint), id)
    where args ? 'inbox_id';
create index job_clerk_org_idx on onboard.job ((args->>'clerk_org_id'))
    where args ? 'clerk_org_id';
create index onboarding_state_idx on onboard.onboarding (state, id);

-- Substring search of onboardings by org name or slug.
create extension if not exists pg_trgm;
create index onboarding_name_trgm_idx on onboard.onboarding
    using gin ((request->>'name') gin_trgm_ops, (request->>'slug') gin_trgm_ops);
