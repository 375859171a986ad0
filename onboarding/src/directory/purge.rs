//! Erasing a deleted user's personal data from everything we stored (DESIGN.md §5,
//! `user.deleted`). `app_user` is nulled by [`super::delete_user`]; this erases the rest.
//!
//! First the user's profile is gathered from what we hold about them: their addresses, phone
//! numbers and IPs (from their own payloads, the sagas they created and the caller). Then:
//! - inbox payloads: `user.*` of that user (`data` becomes `{object, id, deleted}`), `session.*`
//!   of that user (the nested `user` and `latest_activity` go), `organizationMembership.*` whose
//!   `public_user_data` is theirs (only `user_id` stays), `organizationInvitation.*` accepted by
//!   them, of an invitation they accepted, or sent to one of their addresses (`email_address`
//!   becomes null), `email.*` / `sms.*` to them (`data` becomes `{object, id, deleted}`), and
//!   stored events of any other type that name them anywhere (same). Each one's
//!   `event_attributes.http_request` (IP, user agent) is blanked, and so is every other
//!   payload's whose IP is one of theirs or that is an `organization.*` event they created;
//! - `rejected_delivery` rows whose body or reason names them: body emptied, reason replaced;
//! - the sagas they created (or that name one of their addresses): the request's creator email
//!   and first name become null, the welcome email's `recipient` goes from the step output,
//!   and a step error naming them is replaced;
//! - invitation addresses in `membership`;
//! - jobs (kept until retention) whose arguments or error history name them: each string that
//!   names them is replaced ([`jobs::redact::redact`]).
//!
//! Idempotent. Their addresses are remembered only as SHA-256 hashes (`erased_email`), so that
//! an invitation to one of them arriving later is erased on arrival.

use sqlx::PgConnection;

/// What a purge changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Inbox rows whose payload was rewritten.
    pub payloads: u64,
    /// Membership rows whose invitation address was erased.
    pub memberships: u64,
    /// Rejected deliveries whose body was erased.
    pub rejected: u64,
    /// Sagas whose request or step outputs were erased.
    pub onboardings: u64,
    /// Jobs whose arguments or errors were erased.
    pub jobs: u64,
}

/// What replaces a text that named the deleted user.
const ERASED: &str = "erased: it named a deleted user";

// The user's own payloads: those about them by id (the expression indexes of the directory
// and privacy migrations), and the Clerk messages sent to them.
const MINE: &str = "
mine as (
    select event_type, payload from onboard.inbox
     where onboard.clerk_payload_user_id(event_type, payload) = $1
    union all
    select event_type, payload from onboard.inbox
     where (event_type like 'email.%' or event_type like 'sms.%') and payload #>> '{data,user_id}' = $1
),
sagas as (
    select request, id from onboard.onboarding where request #>> '{creator,user_id}' = $1
)";

fn array_of(path: &str) -> String {
    format!(
        "jsonb_array_elements(case when jsonb_typeof(payload #> '{path}') = 'array'
                                   then payload #> '{path}' else '[]'::jsonb end) e"
    )
}

// Every address, phone number and IP of the user found in what we hold, plus the addresses
// the caller knows.
fn profile_sql() -> String {
    format!(
        "with {MINE},
emails as (
    select unnest($2::text[]) as v
    union all select e ->> 'email_address' from mine, {user}
    union all select e ->> 'email_address' from mine, {nested}
    union all select payload #>> '{{data,public_user_data,identifier}}' from mine
     where event_type like 'organizationMembership.%'
    union all select payload #>> '{{data,email_address}}' from mine
     where event_type like 'organizationInvitation.%'
    union all select payload #>> '{{data,to_email_address}}' from mine where event_type like 'email.%'
    union all select request #>> '{{creator,email}}' from sagas
    union all select s.output ->> 'recipient' from sagas join onboard.onboarding_step s on s.onboarding_id = sagas.id
),
phones as (
    select e ->> 'phone_number' as v from mine, {phones}
    union all select e ->> 'phone_number' from mine, {nested_phones}
    union all select payload #>> '{{data,to_phone_number}}' from mine where event_type like 'sms.%'
),
ips as (
    select payload #>> '{{event_attributes,http_request,client_ip}}' as v from mine
    union all select payload #>> '{{data,latest_activity,ip_address}}' from mine
)
select (select coalesce(array_agg(distinct lower(v)), '{{}}') from emails where v like '%@%'),
       (select coalesce(array_agg(distinct v), '{{}}') from phones where v <> ''),
       (select coalesce(array_agg(distinct v), '{{}}') from ips where v <> '')",
        user = array_of("{data,email_addresses}"),
        nested = array_of("{data,user,email_addresses}"),
        phones = array_of("{data,phone_numbers}"),
        nested_phones = array_of("{data,user,phone_numbers}"),
    )
}

// Invitations the user accepted (by their rows and by their payloads).
const INVITATIONS: &str = "
select clerk_invitation_id from onboard.membership
 where clerk_user_id = $1 and clerk_invitation_id is not null
union
select payload #>> '{data,id}' from onboard.inbox
 where onboard.clerk_payload_user_id(event_type, payload) = $1
   -- starts_with, not like: the partial index on invitations would be ANDed in, whole.
   and starts_with(event_type, 'organizationInvitation.')";

// Each branch is an index scan (the expression and partial indexes of the directory and
// privacy migrations); the ids are collected first so the rewrite is a primary-key lookup.
// `$4` are the needles (id, addresses, phones) searched in events of no known family.
const TARGETS: &str = "
select id from onboard.inbox
 where onboard.clerk_payload_user_id(event_type, payload) = $1
union
select id from onboard.inbox
 where event_type like 'organizationInvitation.%' and payload #>> '{data,id}' = any($2::text[])
union
select id from onboard.inbox
 where event_type like 'organizationInvitation.%'
   and lower(payload #>> '{data,email_address}') = any($3::text[])
union
select id from onboard.inbox
 where (event_type like 'email.%' or event_type like 'sms.%')
   and (payload #>> '{data,user_id}' = $1
        or lower(payload #>> '{data,to_email_address}') = any($3::text[])
        or payload #>> '{data,to_phone_number}' = any($4::text[]))
union
select id from onboard.inbox
 where payload is not null
   and split_part(event_type, '.', 1) not in ('user', 'session', 'email', 'sms', 'organization',
                                               'organizationMembership', 'organizationInvitation')
   and exists (select 1 from unnest($4::text[]) n where strpos(lower(payload::text), n) > 0)";

// Every rewrite goes through `jsonb_set_in_object` (privacy migration): a payload of any
// shape is left as it is where the path does not lead through objects, never an error.
const PURGE_INBOX: &str = r#"
update onboard.inbox i set payload = p.payload
  from (select i.id, onboard.jsonb_set_in_object(b.payload, '{event_attributes,http_request}',
                                                 '{"client_ip": "", "user_agent": ""}') as payload
          from onboard.inbox i
          cross join lateral (select case
              when i.event_type like 'user.%' then
                  onboard.jsonb_set_in_object(i.payload, '{data}',
                            jsonb_build_object('object', 'user', 'id', $2::text, 'deleted', true))
              when i.event_type like 'session.%' then
                  case when jsonb_typeof(i.payload -> 'data') = 'object' then
                      jsonb_set(i.payload, '{data}',
                                ((i.payload -> 'data') - 'latest_activity') || jsonb_build_object('user', null))
                  else i.payload end
              when i.event_type like 'organizationMembership.%' then
                  onboard.jsonb_set_in_object(i.payload, '{data,public_user_data}', jsonb_build_object('user_id', $2::text))
              when i.event_type like 'organizationInvitation.%' then
                  onboard.jsonb_set_in_object(i.payload, '{data,email_address}', 'null')
              when i.event_type like 'organization.%' then i.payload
              else onboard.jsonb_set_in_object(i.payload, '{data}',
                             jsonb_build_object('object', i.payload #> '{data,object}',
                                                'id', i.payload #> '{data,id}', 'deleted', true))
              end as payload) b
         where i.id = any($1::bigint[])) p
 where i.id = p.id and i.payload is distinct from p.payload"#;

// Request metadata (IP, user agent) of the events the user acted in: by their IP, and the
// organizations they created.
const PURGE_REQUESTS: &str = r#"
update onboard.inbox
   set payload = onboard.jsonb_set_in_object(payload, '{event_attributes,http_request}', '{"client_ip": "", "user_agent": ""}')
 where id in (select id from onboard.inbox
               where payload is not null
                 and payload #>> '{event_attributes,http_request,client_ip}' = any($2::text[])
              union
              select id from onboard.inbox
               where event_type like 'organization.%' and payload #>> '{data,created_by}' = $1)
   and payload #> '{event_attributes,http_request}' is distinct from '{"client_ip": "", "user_agent": ""}'"#;

// `$2` are lower-case needles; bodies are bytes (escape-encoded, ASCII stays as is).
const PURGE_REJECTED: &str = "
update onboard.rejected_delivery
   set body = '\\x'::bytea, reason = 'erased: it named a deleted user'
 where exists (select 1 from unnest($1::text[]) n
                where strpos(lower(encode(body, 'escape')), n) > 0 or strpos(lower(reason), n) > 0)";

const PURGE_SAGAS: &str = "
with sagas as (
    select id from onboard.onboarding
     where request #>> '{creator,user_id}' = $1
        or lower(request #>> '{creator,email}') = any($2::text[])
),
requests as (
    update onboard.onboarding o
       set request = onboard.jsonb_set_in_object(
                         onboard.jsonb_set_in_object(request, '{creator,email}', 'null'),
                         '{creator,first_name}', 'null'),
           updated_at = now()
      from sagas
     where o.id = sagas.id and jsonb_typeof(o.request -> 'creator') = 'object'
       and (o.request #> '{creator,email}' <> 'null' or o.request #> '{creator,first_name}' <> 'null')
    returning o.id
),
steps as (
    update onboard.onboarding_step s
       set output = s.output - 'recipient',
           last_error = case when exists (select 1 from unnest($3::text[]) n where strpos(lower(s.last_error), n) > 0)
                             then 'erased: it named a deleted user' else s.last_error end,
           updated_at = now()
      from sagas
     where s.onboarding_id = sagas.id
       and (s.output ? 'recipient'
            or exists (select 1 from unnest($3::text[]) n where strpos(lower(s.last_error), n) > 0))
    returning s.onboarding_id
)
select count(*) from (select id from requests union select onboarding_id from steps) changed";

/// Erases a deleted user's personal data from everything stored about them (see the module).
/// `known_emails` are addresses known from elsewhere (the `app_user` row before it was nulled).
pub async fn purge_user_data(
    conn: &mut PgConnection,
    clerk_user_id: &str,
    known_emails: &[String],
) -> Result<Purged, sqlx::Error> {
    let (emails, phones, ips): (Vec<String>, Vec<String>, Vec<String>) =
        sqlx::query_as(sqlx::AssertSqlSafe(profile_sql()))
            .bind(clerk_user_id)
            .bind(known_emails)
            .fetch_one(&mut *conn)
            .await?;
    let invitations: Vec<String> = sqlx::query_scalar(INVITATIONS)
        .bind(clerk_user_id)
        .fetch_all(&mut *conn)
        .await?;
    // What names them in free text: their id, addresses and phone numbers (lower case).
    let mut needles = vec![clerk_user_id.to_lowercase()];
    needles.extend(emails.iter().cloned());
    needles.extend(phones.iter().map(|p| p.to_lowercase()));
    let targets: Vec<i64> = sqlx::query_scalar(TARGETS)
        .bind(clerk_user_id)
        .bind(&invitations)
        .bind(&emails)
        .bind(&needles)
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
        .await?
        .rows_affected()
        + sqlx::query(PURGE_REQUESTS)
            .bind(clerk_user_id)
            .bind(&ips)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    let mut everything = needles.clone();
    everything.extend(ips.iter().cloned());
    let rejected = sqlx::query(PURGE_REJECTED)
        .bind(&everything)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let onboardings: i64 = sqlx::query_scalar(PURGE_SAGAS)
        .bind(clerk_user_id)
        .bind(&emails)
        .bind(&needles)
        .fetch_one(&mut *conn)
        .await?;
    // Their addresses, phone numbers and IPs, not their id (jobs may name it to do their work).
    // After the sagas (whose handlers lock their saga, then their job): the same lock order.
    let personal: Vec<String> = emails.iter().chain(&phones).chain(&ips).cloned().collect();
    let jobs = jobs::redact::redact(&mut *conn, &personal, ERASED).await?;
    let memberships = sqlx::query(
        "update onboard.membership set email = null, updated_at = now()
          where email is not null and (clerk_user_id = $1 or lower(email) = any($2::text[]))",
    )
    .bind(clerk_user_id)
    .bind(&emails)
    .execute(conn)
    .await?;
    Ok(Purged {
        payloads,
        memberships: memberships.rows_affected(),
        rejected,
        onboardings: u64::try_from(onboardings).unwrap_or(0),
        jobs,
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
              set payload = onboard.jsonb_set_in_object(
                                onboard.jsonb_set_in_object(payload, '{data,email_address}', 'null'),
                                '{event_attributes,http_request}', '{"client_ip": "", "user_agent": ""}')
            where id = $1 and event_type like 'organizationInvitation.%'"#,
    )
    .bind(inbox_id)
    .execute(conn)
    .await?;
    Ok(())
}
