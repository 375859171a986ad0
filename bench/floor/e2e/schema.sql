-- The raw-SQL floor of one onboarding (`bench e2e`): the rows an onboarding writes, on
-- minimal tables (primary keys, the unique keys the writes conflict on, one claim index).
CREATE TABLE inbox (
    id          bigserial PRIMARY KEY,
    svix_id     text NOT NULL UNIQUE,
    event_type  text NOT NULL,
    payload     jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL,
    args         jsonb NOT NULL,
    state        text NOT NULL DEFAULT 'available',
    attempt      integer NOT NULL DEFAULT 0,
    run_at       timestamptz NOT NULL DEFAULT now(),
    finalized_at timestamptz
);
CREATE INDEX jobs_available ON jobs (run_at, id) WHERE state = 'available';

CREATE TABLE app_user (
    id            bigserial PRIMARY KEY,
    clerk_user_id text NOT NULL UNIQUE,
    email         text,
    first_name    text,
    last_name     text
);

CREATE TABLE organization (
    id           bigserial PRIMARY KEY,
    clerk_org_id text NOT NULL UNIQUE,
    name         text NOT NULL,
    slug         text,
    created_by   text,
    twilio_sid   text,
    status       text NOT NULL DEFAULT 'pending',
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE onboarding (
    id           bigserial PRIMARY KEY,
    clerk_org_id text NOT NULL UNIQUE,
    state        text NOT NULL DEFAULT 'running',
    request      jsonb NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE onboarding_step (
    onboarding_id bigint NOT NULL,
    name          text NOT NULL,
    state         text NOT NULL,
    output        jsonb,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (onboarding_id, name)
);

CREATE TABLE role_permission (
    organization_id bigint NOT NULL,
    role            text NOT NULL,
    permission      text NOT NULL,
    PRIMARY KEY (organization_id, role, permission)
);

-- The default grants (the CRM's role→permission matrix), which the saga copies per
-- organization. `bench e2e` fills it from `onboarding::permissions::grants()`, the product's own
-- matrix, so the floor writes as many grants as an onboarding does.
CREATE TABLE default_grant (
    role       text NOT NULL,
    permission text NOT NULL
);
