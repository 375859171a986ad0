-- Ingress (DESIGN.md §5, §6): the Clerk webhook inbox, rejected deliveries, API keys, the
-- onboarding API's idempotency records, and the minimal onboarding saga tables (§4) that
-- `jobs::onboarding::start` writes; the saga's workers build on them.

-- One row per Svix message, deduplicated on its `svix-id` forever (Svix replays reuse it).
create table onboard.inbox (
    id             bigint generated always as identity primary key,
    svix_id        text        not null unique,
    event_type     text        not null,
    -- The raw envelope as delivered (verified before it was parsed).
    payload        jsonb       not null,
    -- This attempt's `svix-timestamp` (Unix seconds) and `svix-signature` header.
    svix_timestamp bigint      not null,
    svix_signature text        not null,
    -- True for event types we store but do not act on (no job was enqueued).
    ignored        boolean     not null default false,
    received_at    timestamptz not null default now()
);

-- Signed deliveries that are not Clerk envelopes: kept out of the inbox so every retry is
-- rejected the same way, and shown to operators. One row per `svix-id`, counting attempts.
create table onboard.rejected_delivery (
    id             bigint generated always as identity primary key,
    svix_id        text        not null unique,
    svix_timestamp bigint      not null,
    reason         text        not null,
    -- The raw body (bytea: it need not be valid JSON or text).
    body           bytea       not null,
    attempts       integer     not null default 1,
    first_seen_at  timestamptz not null default now(),
    last_seen_at   timestamptz not null default now()
);

-- Onboarding API keys. Only a SHA-256 of the key is stored; `prefix` (public, part of the
-- key) finds the row, the hash is compared in constant time.
create table onboard.api_key (
    id           bigint generated always as identity primary key,
    name         text        not null,
    prefix       text        not null unique,
    key_hash     bytea       not null,
    created_at   timestamptz not null default now(),
    revoked_at   timestamptz
);
-- A name belongs to at most one active key.
create unique index api_key_active_name_idx on onboard.api_key (name) where revoked_at is null;

-- One saga per Clerk organization (DESIGN.md §4), whoever asks first: webhook or API.
create table onboard.onboarding (
    id           bigint generated always as identity primary key,
    clerk_org_id text        not null unique,
    state        text        not null default 'running'
        check (state in ('running', 'completed', 'completed_with_errors', 'compensating',
                         'compensated', 'compensation_failed')),
    -- Who started it: 'webhook' (organization.created) or 'api' (POST /v1/onboarding).
    source       text        not null check (source in ('webhook', 'api')),
    -- The starting request (org name, slug, creator), input to the first step.
    request      jsonb       not null,
    -- The inbox row of the organization.created event that started it, if any.
    inbox_id     bigint      references onboard.inbox (id) on delete set null,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);

-- One row per (saga, step).
create table onboard.onboarding_step (
    onboarding_id bigint      not null references onboard.onboarding (id) on delete cascade,
    name          text        not null,
    -- Order of the step in the saga, from 1.
    position      smallint    not null,
    state         text        not null default 'pending'
        check (state in ('pending', 'running', 'done', 'failed', 'compensating', 'compensated',
                         'skipped')),
    attempts      integer     not null default 0,
    last_error    text,
    output        jsonb       not null default '{}',
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now(),
    primary key (onboarding_id, name)
);

-- The onboarding API's idempotency records: one per (API key, Idempotency-Key). Inserted in
-- the transaction that starts the onboarding; a concurrent duplicate waits on this key.
create table onboard.api_idempotency (
    api_key_id      bigint      not null references onboard.api_key (id) on delete cascade,
    idempotency_key text        not null,
    -- SHA-256 of the normalised request: the same key with another body is refused.
    request_hash    bytea       not null,
    onboarding_id   bigint      references onboard.onboarding (id) on delete cascade,
    created_at      timestamptz not null default now(),
    primary key (api_key_id, idempotency_key)
);
