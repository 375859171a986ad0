-- Privacy and retention (issue 9 §12, §13): what `user.deleted` must find, and what the
-- retention job deletes.

-- Retention keeps each svix-id (dedup) and its received time for a long window, but drops the
-- payload and the signature after a short one: both become null.
alter table onboard.inbox alter column payload drop not null;
alter table onboard.inbox alter column svix_signature drop not null;

-- Retention: rows still holding a payload, oldest first (rows leave the index once nulled).
create index inbox_payload_received_idx on onboard.inbox (received_at) where payload is not null;
-- Retention: deleting rows past the long window (append-only, so BRIN is enough and cheap).
create index inbox_received_brin on onboard.inbox using brin (received_at);
create index rejected_delivery_last_seen_idx on onboard.rejected_delivery (last_seen_at);
create index api_idempotency_created_idx on onboard.api_idempotency (created_at);

-- Purge: Clerk's `email.*` and `sms.*` messages name their user in `data.user_id`.
create index inbox_message_user_idx on onboard.inbox ((payload #>> '{data,user_id}'))
    where event_type like 'email.%' or event_type like 'sms.%';
-- Purge: the acting user's IP in every stored payload.
create index inbox_client_ip_idx on onboard.inbox ((payload #>> '{event_attributes,http_request,client_ip}'))
    where payload is not null;
-- Purge: stored event types of no known family (searched as text).
create index inbox_other_type_idx on onboard.inbox (id)
    where payload is not null
      and split_part(event_type, '.', 1) not in ('user', 'session', 'email', 'sms', 'organization',
                                                  'organizationMembership', 'organizationInvitation');
-- Purge: the sagas a user created (their email and first name are in the request).
create index onboarding_creator_idx on onboard.onboarding ((request #>> '{creator,user_id}'));
create index onboarding_creator_email_idx on onboard.onboarding (lower(request #>> '{creator,email}'))
    where request #>> '{creator,email}' is not null;
-- Purge: the organizations a user created (their IP is in those events' request metadata).
create index inbox_org_creator_idx on onboard.inbox ((payload #>> '{data,created_by}'))
    where event_type like 'organization.%';

-- `jsonb_set` that leaves `target` as it is when the parent of `path` is not an object (a
-- stored payload can have any shape: the purge must not fail on it).
create function onboard.jsonb_set_in_object(target jsonb, path text[], value jsonb) returns jsonb
language sql immutable parallel safe
as $$
    select case when jsonb_typeof(target #> path[1:cardinality(path) - 1]) = 'object'
                then jsonb_set(target, path, value) else target end
$$;
