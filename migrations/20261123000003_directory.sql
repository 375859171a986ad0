-- The directory (DESIGN.md §5): organizations, users and memberships as Clerk's events describe
-- them. Every upsert is last-writer-wins on the payload's `data.updated_at` (Unix ms, kept in
-- `clerk_updated_at`); deletes leave tombstones that older events cannot resurrect. The rules
-- live in `jobs::directory`; these tables only hold the result.

-- One row per Clerk organization. A row may start as a stub (only `clerk_org_id`, clock null)
-- when a membership or invitation names an organization we have not seen yet.
create table onboard.organization (
    id                   bigint generated always as identity primary key,
    clerk_org_id         text        not null unique,
    name                 text,
    slug                 text,
    image_url            text,
    -- The Clerk user id of the creator.
    created_by           text,
    public_metadata      jsonb,
    -- The LWW clock: `data.updated_at` (Unix ms) of the snapshot stored; null for a stub.
    clerk_updated_at     bigint,
    -- Tombstone: set once by `organization.deleted`, never cleared.
    deleted_at           timestamptz,
    -- Owned by the onboarding saga (and set to 'deleted' with the tombstone); the directory's
    -- upserts never touch these two.
    onboarding_status    text        not null default 'pending'
        check (onboarding_status in ('pending', 'active', 'failed', 'deleted')),
    twilio_subaccount_sid text,
    created_at           timestamptz not null default now(),
    updated_at           timestamptz not null default now()
);

-- One row per Clerk user (`user` is a reserved word). Personal data is nulled on delete.
create table onboard.app_user (
    id                     bigint generated always as identity primary key,
    clerk_user_id          text        not null unique,
    -- The `email_addresses` entry whose id is `primary_email_address_id`.
    primary_email          text,
    first_name             text,
    last_name              text,
    username               text,
    image_url              text,
    -- The LWW clock of `user.*` events; null while the row holds only the public data a
    -- membership event carried (those never overwrite a `user.*` snapshot).
    clerk_updated_at       bigint,
    -- The clock of that membership-sourced public data (the membership's `updated_at`).
    public_data_updated_at bigint,
    -- Tombstone: set by `user.deleted`, never cleared.
    deleted_at             timestamptz,
    created_at             timestamptz not null default now(),
    updated_at             timestamptz not null default now()
);

-- A user's place in an organization: a membership (written by `organizationMembership.*`), an
-- invitation (`organizationInvitation.*`), or both once an accepted invitation and its
-- membership meet on (organization, user). Each part keeps its own clock; `state`, `role` and
-- `clerk_role` are derived from them (the membership part wins when present).
create table onboard.membership (
    id                    bigint generated always as identity primary key,
    organization_id       bigint      not null references onboard.organization (id) on delete cascade,
    -- Null only for an invitation not (yet) accepted.
    clerk_user_id         text,
    -- The invited address (invitations only).
    email                 text,
    role                  text        not null check (role in ('ADMIN', 'AGENT', 'VIEWER')),
    -- The Clerk role the mapped `role` came from (`org:admin`, …).
    clerk_role            text        not null,
    state                 text        not null check (state in ('pending', 'active', 'revoked', 'ended')),
    -- Membership part (null until a membership event arrives).
    clerk_membership_id   text,
    membership_role       text,
    membership_created_at bigint,
    -- The membership part's LWW clock (`data.updated_at`, Unix ms).
    clerk_updated_at      bigint,
    membership_deleted    boolean     not null default false,
    -- Invitation part (null unless an invitation event arrived).
    clerk_invitation_id   text,
    invitation_status     text        check (invitation_status in ('pending', 'accepted', 'revoked')),
    invitation_role       text,
    invitation_updated_at bigint,
    -- When `state` became 'ended'.
    ended_at              timestamptz,
    created_at            timestamptz not null default now(),
    updated_at            timestamptz not null default now(),
    constraint membership_has_subject check (clerk_user_id is not null or clerk_invitation_id is not null),
    constraint membership_has_part check (clerk_membership_id is not null or clerk_invitation_id is not null),
    constraint membership_part check ((clerk_membership_id is null) = (clerk_updated_at is null)),
    constraint invitation_part check ((clerk_invitation_id is null) = (invitation_status is null))
);

create unique index membership_user_idx on onboard.membership (organization_id, clerk_user_id)
    where clerk_user_id is not null;
create unique index membership_invitation_idx on onboard.membership (clerk_invitation_id)
    where clerk_invitation_id is not null;
-- The tenant policy and ending a deleted organization's rows.
create index membership_organization_idx on onboard.membership (organization_id);
create index membership_clerk_user_idx on onboard.membership (clerk_user_id)
    where clerk_user_id is not null;
-- Purging a deleted user's invitation addresses.
create index membership_email_idx on onboard.membership (lower(email))
    where email is not null;

-- The organization the CRM's session is scoped to: `app.current_organization` holds the Clerk
-- organization id (`org_…`) or our numeric `organization.id`; null when unset or unknown.
-- SECURITY DEFINER so tenant roles need no access to `organization` to use the policies.
create function onboard.current_organization_id() returns bigint
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
    select o.id
      from onboard.organization o,
           (select nullif(current_setting('app.current_organization', true), '') as v) s
     where o.clerk_org_id = s.v
        or o.id = case when s.v ~ '^[0-9]{1,18}$' then s.v::bigint end
     limit 1
$$;

-- Tenant table: the CRM reads it under row-level security. The owner (the service's role)
-- bypasses the policy: RLS is enabled, not forced.
alter table onboard.membership enable row level security;
create policy membership_tenant on onboard.membership
    using (organization_id = (select onboard.current_organization_id()));

-- Addresses of deleted users, as SHA-256 of the lower-cased address: an invitation to one
-- that arrives after the purge is erased on arrival (its address is no longer stored anywhere
-- else to match on).
create table onboard.erased_email (
    email_sha256 bytea       primary key,
    erased_at    timestamptz not null default now()
);

-- Finding a user's personal data in stored payloads (`user.deleted` purges it): the Clerk user
-- id each payload is about, and the address of each invitation.
create function onboard.clerk_payload_user_id(event_type text, payload jsonb) returns text
language sql immutable parallel safe
as $$
    select case
        when event_type like 'user.%' then payload #>> '{data,id}'
        when event_type like 'session.%' then payload #>> '{data,user_id}'
        when event_type like 'organizationMembership.%' then payload #>> '{data,public_user_data,user_id}'
        when event_type like 'organizationInvitation.%' then payload #>> '{data,user_id}'
    end
$$;

create index inbox_clerk_user_idx on onboard.inbox (onboard.clerk_payload_user_id(event_type, payload))
    where onboard.clerk_payload_user_id(event_type, payload) is not null;
create index inbox_invitation_id_idx on onboard.inbox ((payload #>> '{data,id}'))
    where event_type like 'organizationInvitation.%';
create index inbox_invitation_email_idx on onboard.inbox (lower(payload #>> '{data,email_address}'))
    where event_type like 'organizationInvitation.%';
