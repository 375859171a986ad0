-- The onboarding saga's own data (DESIGN.md §4): default permissions per organization, and
-- the job each step row last ran as (for operators and the reconciler).

-- role→permission grants per organization (reference/permissions.md). A tenant table: the CRM
-- reads it under row-level security with `app.current_organization` set to the Clerk org id.
create table onboard.role_permission (
    organization_id bigint      not null references onboard.organization (id) on delete cascade,
    role            text        not null check (role in ('ADMIN', 'AGENT', 'VIEWER')),
    permission      text        not null,
    created_at      timestamptz not null default now(),
    primary key (organization_id, role, permission)
);

alter table onboard.role_permission enable row level security;
create policy role_permission_tenant on onboard.role_permission
    using (organization_id = (select o.id from onboard.organization o
                               where o.clerk_org_id = current_setting('app.current_organization', true)));
