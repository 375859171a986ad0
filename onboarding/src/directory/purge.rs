//! Erasing a deleted user's personal data from what we stored (DESIGN.md §5, `user.deleted`):
//! the inbox payloads about them and the invitation addresses in `membership`. `app_user` is
//! nulled by [`super::delete_user`].
//!
//! Which payloads: `user.*` events of that user (their `data` becomes `{object, id, deleted}`),
//! `session.*` events of that user (the nested `user` and `latest_activity` go),
//! `organizationMembership.*` events whose `public_user_data` is theirs (only `user_id` stays),
//! and `organizationInvitation.*` events accepted by them, of an invitation they accepted, or
//! sent to one of their addresses (`email_address` becomes null). Each purged payload's
//! `event_attributes.http_request` (IP, user agent) is blanked too. Idempotent.
//!
//! Their addresses are remembered only as SHA-256 hashes (`erased_email`), so that an
//! invitation to one of them arriving later is erased on arrival.

use sqlx::PgConnection;

/// What a purge changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Inbox rows whose payload was rewritten.
    pub payloads: u64,
    /// Membership rows whose invitation address was erased.
    pub memberships: u64,
}

// Every address of the user found in their payloads, plus the ones the caller knows.
const EMAILS: &str = "
with mine as (
    select event_type, payload from onboard.inbox
     where onboard.clerk_payload_user_id(event_type, payload) = $1
),
found as (
    select unnest($2::text[]) as email
    union all
    select e ->> 'email_address'
      from mine,
           jsonb_array_elements(case
               when jsonb_typeof(payload #> '{data,email_addresses}') = 'array' then payload #> '{data,email_addresses}'
               when jsonb_typeof(payload #> '{data,user,email_addresses}') = 'array' then payload #> '{data,user,email_addresses}'
               else '[]'::jsonb end) e
    union all
    select payload #>> '{data,public_user_data,identifier}' from mine
     where event_type like 'organizationMembership.%'
    union all
    select payload #>> '{data,email_address}' from mine
     where event_type like 'organizationInvitation.%'
)
select coalesce(array_agg(distinct lower(email)), '{}') from found where email like '%@%'";

// Invitations the user accepted (by their rows and by their payloads).
const INVITATIONS: &str = "
select clerk_invitation_id from onboard.membership
 where clerk_user_id = $1 and clerk_invitation_id is not null
union
select payload #>> '{data,id}' from onboard.inbox
 where onboard.clerk_payload_user_id(event_type, payload) = $1
   -- starts_with, not like: the partial index on invitations would be ANDed in, whole.
   and starts_with(event_type, 'organizationInvitation.')";

// Each branch is an index scan (the expression and partial indexes of the directory
// migration); the ids are collected first so the rewrite is a primary-key lookup.
const TARGETS: &str = "
select id from onboard.inbox
 where onboard.clerk_payload_user_id(event_type, payload) = $1
union
select id from onboard.inbox
 where event_type like 'organizationInvitation.%' and payload #>> '{data,id}' = any($2::text[])
union
select id from onboard.inbox
 where event_type like 'organizationInvitation.%'
   and lower(payload #>> '{data,email_address}') = any($3::text[])";

const PURGE_INBOX: &str = r#"
update onboard.inbox i set payload = p.payload
  from (select i.id, jsonb_set(b.payload, '{event_attributes,http_request}',
                               '{"client_ip": "", "user_agent": ""}') as payload
          from onboard.inbox i
          cross join lateral (select case
              when i.event_type like 'user.%' then
                  jsonb_set(i.payload, '{data}',
                            jsonb_build_object('object', 'user', 'id', $2::text, 'deleted', true))
              when i.event_type like 'session.%' then
                  jsonb_set(i.payload, '{data}',
                            (coalesce(i.payload -> 'data', '{}') - 'latest_activity')
                            || jsonb_build_object('user', null))
              when i.event_type like 'organizationMembership.%' then
                  jsonb_set(i.payload, '{data,public_user_data}', jsonb_build_object('user_id', $2::text))
              when i.event_type like 'organizationInvitation.%' then
                  jsonb_set(i.payload, '{data,email_address}', 'null')
              else i.payload end as payload) b
         where i.id = any($1::bigint[])) p
 where i.id = p.id and i.payload is distinct from p.payload"#;

/// Erases a deleted user's personal data from inbox payloads and invitation addresses.
/// `known_emails` are addresses known from elsewhere (the `app_user` row before it was nulled).
pub async fn purge_user_data(
    conn: &mut PgConnection,
    clerk_user_id: &str,
    known_emails: &[String],
) -> Result<Purged, sqlx::Error> {
    let emails: Vec<String> = sqlx::query_scalar(EMAILS)
        .bind(clerk_user_id)
        .bind(known_emails)
        .fetch_one(&mut *conn)
        .await?;
    let invitations: Vec<String> = sqlx::query_scalar(INVITATIONS)
        .bind(clerk_user_id)
        .fetch_all(&mut *conn)
        .await?;
    let targets: Vec<i64> = sqlx::query_scalar(TARGETS)
        .bind(clerk_user_id)
        .bind(&invitations)
        .bind(&emails)
        .fetch_all(&mut *conn)
        .await?;
    // Remember the addresses (hashed), so invitations to them that arrive later are erased too.
    sqlx::query(
        "insert into onboard.erased_email (email_sha256)
         select distinct sha256(convert_to(e, 'UTF8')) from unnest($1::text[]) e
         on conflict do nothing",
    )
    .bind(&emails)
    .execute(&mut *conn)
    .await?;
    let payloads = sqlx::query(PURGE_INBOX)
        .bind(&targets)
        .bind(clerk_user_id)
        .execute(&mut *conn)
        .await?;
    let memberships = sqlx::query(
        "update onboard.membership set email = null, updated_at = now()
          where email is not null and (clerk_user_id = $1 or lower(email) = any($2::text[]))",
    )
    .bind(clerk_user_id)
    .bind(&emails)
    .execute(conn)
    .await?;
    Ok(Purged {
        payloads: payloads.rows_affected(),
        memberships: memberships.rows_affected(),
    })
}

/// True when `email` belongs to a deleted user (see [`purge_user_data`]).
pub async fn is_erased_email(conn: &mut PgConnection, email: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from onboard.erased_email where email_sha256 = sha256(convert_to(lower($1), 'UTF8')))",
    )
    .bind(email)
    .fetch_one(conn)
    .await
}

/// Erases the invitation address (and request metadata) of one stored invitation payload.
pub async fn erase_invitation_email(
    conn: &mut PgConnection,
    inbox_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"update onboard.inbox
              set payload = jsonb_set(jsonb_set(payload, '{data,email_address}', 'null'),
                                      '{event_attributes,http_request}', '{"client_ip": "", "user_agent": ""}')
            where id = $1 and event_type like 'organizationInvitation.%'"#,
    )
    .bind(inbox_id)
    .execute(conn)
    .await?;
    Ok(())
}
