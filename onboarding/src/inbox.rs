//! The Clerk webhook inbox: every verified delivery is stored once per `svix-id`, and a new one
//! gets its job (DESIGN.md §5) in the same statement. Signed deliveries that are not Clerk
//! envelopes go to `rejected_delivery` instead.
//!
//! The statement does not NOTIFY (unlike `jobs::enqueue`'s): the ingress commits thousands of
//! these a second, and notifying commits are serialised by a cluster-wide lock. The caller
//! wakes the queue after the commit through a [`jobs::notify::Coalescer`] instead (see
//! [`Received::queue_to_wake`]).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use sqlx::PgConnection;

use crate::id::SvixId;
use crate::id::{ClerkOrgId, ClerkUserId};
use crate::request::{Creator, OnboardingRequest, Source};

/// The queue of the jobs made from Clerk events.
pub const QUEUE: &str = "clerk";

/// The kind of the job an `organization.created` delivery gets: its handler starts the
/// organization's onboarding saga (`start::start_from_payload_for_caller`).
pub const ORGANIZATION_CREATED_KIND: &str = "clerk.organization.created";

/// Clerk event types that get a `clerk.<type>` job (DESIGN.md §5), with that job's kind. Other
/// types are stored, marked ignored.
pub const ROUTED: [(&str, &str); 12] = [
    ("organization.created", ORGANIZATION_CREATED_KIND),
    ("organization.updated", "clerk.organization.updated"),
    ("organization.deleted", "clerk.organization.deleted"),
    ("user.created", "clerk.user.created"),
    ("user.updated", "clerk.user.updated"),
    ("user.deleted", "clerk.user.deleted"),
    (
        "organizationMembership.created",
        "clerk.organizationMembership.created",
    ),
    (
        "organizationMembership.updated",
        "clerk.organizationMembership.updated",
    ),
    (
        "organizationMembership.deleted",
        "clerk.organizationMembership.deleted",
    ),
    (
        "organizationInvitation.created",
        "clerk.organizationInvitation.created",
    ),
    (
        "organizationInvitation.accepted",
        "clerk.organizationInvitation.accepted",
    ),
    (
        "organizationInvitation.revoked",
        "clerk.organizationInvitation.revoked",
    ),
];

/// Attempts of a `clerk.*` job before it is discarded.
pub const MAX_ATTEMPTS: i32 = 20;

/// Why a signed body is not a Clerk envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON, or not an object with a string `type` and an object `data`.
    #[error("not a Clerk event envelope: {0}")]
    Shape(String),
    /// `type` is empty, too long or has characters event types never have.
    #[error("not a Clerk event type")]
    EventType,
    /// `organization.created` without a valid organization id in `data.id` (checked at the
    /// door, so that its job can always start a saga).
    #[error("organization.created without a valid data.id")]
    OrganizationId,
}

/// What a Clerk event leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A `clerk.<type>` job on the `clerk` queue (for `organization.created`, the job that
    /// starts the onboarding saga).
    Job(&'static str),
    /// Stored, marked ignored, no job.
    Ignore,
}

/// A verified delivery's body, parsed leniently: unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClerkEnvelope {
    /// The event type (`user.created`, …).
    pub event_type: String,
    /// What to do with it.
    pub route: Route,
}

/// A JSON value that must be an object; its content is skipped.
struct AnyObject;

impl<'de> Deserialize<'de> for AnyObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = AnyObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyObject, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnyObject)
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    #[serde(rename = "data")]
    _data: AnyObject,
}

#[derive(Deserialize)]
struct OrganizationCreated {
    data: OrganizationData,
}

/// The fields of Clerk's `OrganizationJSON` the saga needs; wrong types are ignored, not fatal.
#[derive(Deserialize)]
struct OrganizationData {
    #[serde(default)]
    id: serde_json::Value,
    #[serde(default)]
    name: serde_json::Value,
    #[serde(default)]
    slug: serde_json::Value,
    #[serde(default)]
    created_by: serde_json::Value,
}

fn text(value: serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

fn is_event_type(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The onboarding request carried by an `organization.created` body: the ingress checks it
/// before storing the delivery ([`organization_created_from`] builds it again from the stored
/// payload).
pub fn organization_created(body: &[u8]) -> Result<OnboardingRequest, EnvelopeError> {
    let event: OrganizationCreated =
        serde_json::from_slice(body).map_err(|e| EnvelopeError::Shape(e.to_string()))?;
    onboarding_request(event)
}

/// [`organization_created`] from a payload already parsed (the stored event's).
pub fn organization_created_from(
    payload: &serde_json::Value,
) -> Result<OnboardingRequest, EnvelopeError> {
    let event = OrganizationCreated::deserialize(payload)
        .map_err(|e| EnvelopeError::Shape(e.to_string()))?;
    onboarding_request(event)
}

fn onboarding_request(event: OrganizationCreated) -> Result<OnboardingRequest, EnvelopeError> {
    let org_id = text(event.data.id)
        .and_then(|id| ClerkOrgId::parse(&id).ok())
        .ok_or(EnvelopeError::OrganizationId)?;
    Ok(OnboardingRequest {
        org_id,
        name: text(event.data.name),
        slug: text(event.data.slug),
        creator: Creator {
            user_id: text(event.data.created_by).and_then(|id| ClerkUserId::parse(&id).ok()),
            email: None,
            first_name: None,
        },
        source: Source::Webhook,
    })
}

impl ClerkEnvelope {
    /// Parses `{type, data, …}` from the raw body; `organization.created` also needs a valid
    /// organization id in `data.id`.
    pub fn parse(body: &[u8]) -> Result<Self, EnvelopeError> {
        let head: Head<'_> =
            serde_json::from_slice(body).map_err(|e| EnvelopeError::Shape(e.to_string()))?;
        if !is_event_type(&head.event_type) {
            return Err(EnvelopeError::EventType);
        }
        let event_type = head.event_type.into_owned();
        if event_type == "organization.created" {
            organization_created(body)?;
        }
        let route = match ROUTED.iter().find(|(t, _)| *t == event_type) {
            Some((_, kind)) => Route::Job(kind),
            None => Route::Ignore,
        };
        Ok(ClerkEnvelope { event_type, route })
    }
}

/// A verified delivery to store.
#[derive(Debug, Clone)]
pub struct InboxEntry<'a> {
    /// `svix-id`, the deduplication key.
    pub svix_id: &'a SvixId,
    /// This attempt's `svix-timestamp` (Unix seconds).
    pub svix_timestamp: i64,
    /// This attempt's `svix-signature` header.
    pub svix_signature: &'a str,
    /// The raw body, as text (stored as jsonb).
    pub payload: &'a str,
    /// The parsed envelope.
    pub envelope: &'a ClerkEnvelope,
}

/// The outcome of [`receive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// False when the `svix-id` was already in the inbox (nothing was written).
    pub new: bool,
    /// The inbox row, when new.
    pub inbox_id: Option<i64>,
    /// The job enqueued for it, if any (none for ignored types and duplicates).
    pub job_id: Option<i64>,
}

impl Received {
    /// The queue the caller must wake once its transaction has committed: [`receive`] does not
    /// NOTIFY, so a new job is found at once only after a
    /// [`jobs::notify::Coalescer::note`] of this queue (else by the workers' fallback poll).
    pub fn queue_to_wake(&self) -> Option<&'static str> {
        self.job_id.map(|_| QUEUE)
    }
}

/// Why [`receive`] stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// PostgreSQL refused the payload as jsonb (e.g. `\u0000`): a rejected delivery.
    #[error("payload not storable as jsonb: {0}")]
    Unstorable(String),
    /// Any other database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

// One statement, one round trip: the job exists only if the inbox row is new. No NOTIFY.
const RECEIVE: &str = "
with inbox_row as (
    insert into onboard.inbox (svix_id, event_type, payload, svix_timestamp, svix_signature, ignored)
    select $1::text, $2::text, $3::text::jsonb, $4::bigint, $5::text, $6::text is null
    on conflict (svix_id) do nothing
    returning id
),
job_row as (
    insert into onboard.job (kind, queue, args, max_attempts)
    select $6::text, $7, jsonb_build_object('inbox_id', inbox_row.id, 'svix_id', $1::text), $8
      from inbox_row
     where $6::text is not null
    returning id
)
select inbox_row.id, (select id from job_row) from inbox_row";

/// Stores a verified delivery and, if its `svix-id` is new, enqueues its job, in ONE
/// statement on the caller's connection or transaction. A concurrent delivery of the same
/// `svix-id` waits for this one to commit and then writes nothing.
///
/// The job's enqueue sends no NOTIFY: after the commit, wake [`Received::queue_to_wake`]
/// (the ingress notes it in its [`jobs::notify::Coalescer`]). Later statements of the
/// caller's transaction notify as usual.
pub async fn receive(
    conn: &mut PgConnection,
    entry: InboxEntry<'_>,
) -> Result<Received, ReceiveError> {
    let kind = match entry.envelope.route {
        Route::Job(kind) => Some(kind),
        Route::Ignore => None,
    };
    let row = sqlx::query_as(RECEIVE)
        .bind(entry.svix_id.as_str())
        .bind(entry.envelope.event_type.as_str())
        .bind(entry.payload)
        .bind(entry.svix_timestamp)
        .bind(entry.svix_signature)
        .bind(kind)
        .bind(QUEUE)
        .bind(MAX_ATTEMPTS)
        .fetch_optional(&mut *conn)
        .await;
    received_one(conn, entry.svix_id.as_str(), row).await
}

/// [`receive`] for an owned entry (what the ingress's writer holds).
pub async fn receive_owned(
    conn: &mut PgConnection,
    entry: &OwnedEntry,
) -> Result<Received, ReceiveError> {
    let row = sqlx::query_as(RECEIVE)
        .bind(&entry.svix_id)
        .bind(&entry.event_type)
        .bind(&entry.payload)
        .bind(entry.svix_timestamp)
        .bind(&entry.svix_signature)
        .bind(entry.kind)
        .bind(QUEUE)
        .bind(MAX_ATTEMPTS)
        .fetch_optional(&mut *conn)
        .await;
    received_one(conn, &entry.svix_id, row).await
}

/// What [`RECEIVE`]'s answer means: new rows, a duplicate (counted), or a refusal.
async fn received_one(
    conn: &mut PgConnection,
    svix_id: &str,
    row: Result<Option<(i64, Option<i64>)>, sqlx::Error>,
) -> Result<Received, ReceiveError> {
    match row {
        Ok(Some((inbox_id, job_id))) => Ok(Received {
            new: true,
            inbox_id: Some(inbox_id),
            job_id,
        }),
        Ok(None) => {
            count_duplicates(conn, &[svix_id]).await?;
            Ok(Received {
                new: false,
                inbox_id: None,
                job_id: None,
            })
        }
        // Class 22 (data exception) on the jsonb cast: the body can never be stored.
        Err(sqlx::Error::Database(e)) if e.code().is_some_and(|c| c.starts_with("22")) => {
            Err(ReceiveError::Unstorable(e.message().to_owned()))
        }
        Err(e) => Err(ReceiveError::Database(e)),
    }
}

// Counts redeliveries (the rare path: a delivery whose svix-id is already stored). The rows
// are locked in svix-id order, as the inserts take them, so two batches cannot deadlock.
const COUNT_DUPLICATES: &str = "
with d as (
    select svix_id, count(*)::int as n from unnest($1::text[]) svix_id group by svix_id
),
l as (
    select i.id, d.n from onboard.inbox i join d on d.svix_id = i.svix_id
     order by i.svix_id
       for update of i
)
update onboard.inbox i set duplicates = i.duplicates + l.n from l where i.id = l.id";

/// Adds one to the duplicate count of each delivery's inbox row (an id listed twice, two).
async fn count_duplicates(conn: &mut PgConnection, svix_ids: &[&str]) -> Result<(), sqlx::Error> {
    if svix_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(COUNT_DUPLICATES)
        .bind(svix_ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// A delivery to store, owned: what [`receive_many`] takes.
#[derive(Debug, Clone)]
pub struct OwnedEntry {
    /// `svix-id`.
    pub svix_id: String,
    /// The event type.
    pub event_type: String,
    /// The raw body, as text.
    pub payload: String,
    /// This attempt's `svix-timestamp`.
    pub svix_timestamp: i64,
    /// This attempt's `svix-signature`.
    pub svix_signature: String,
    /// The job kind, or `None` for an ignored type.
    pub kind: Option<&'static str>,
}

impl OwnedEntry {
    /// Owns a borrowed entry.
    pub fn from_entry(entry: &InboxEntry<'_>) -> Self {
        OwnedEntry {
            svix_id: entry.svix_id.as_str().to_owned(),
            event_type: entry.envelope.event_type.clone(),
            payload: entry.payload.to_owned(),
            svix_timestamp: entry.svix_timestamp,
            svix_signature: entry.svix_signature.to_owned(),
            kind: match entry.envelope.route {
                Route::Job(kind) => Some(kind),
                Route::Ignore => None,
            },
        }
    }
}

// Many deliveries in ONE statement (one round trip, one commit). Rows are inserted in svix-id
// order so two concurrent batches lock shared ids in the same order (no deadlock); a svix-id
// twice in one batch is stored once. No NOTIFY.
const RECEIVE_MANY: &str = "
with batch as (
    select distinct on (svix_id) svix_id, event_type, payload, svix_timestamp, svix_signature, kind
      from unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[])
           with ordinality as b(svix_id, event_type, payload, svix_timestamp, svix_signature, kind, n)
     order by svix_id, n
),
inbox_rows as (
    insert into onboard.inbox (svix_id, event_type, payload, svix_timestamp, svix_signature, ignored)
    select svix_id, event_type, payload::jsonb, svix_timestamp, svix_signature, kind is null
      from batch
     order by svix_id
    on conflict (svix_id) do nothing
    returning id, svix_id
),
job_rows as (
    insert into onboard.job (kind, queue, args, max_attempts)
    select b.kind, $7, jsonb_build_object('inbox_id', i.id, 'svix_id', i.svix_id), $8
      from inbox_rows i join batch b on b.svix_id = i.svix_id
     where b.kind is not null
    returning id, args->>'svix_id' as svix_id
)
select i.svix_id, i.id, j.id from inbox_rows i left join job_rows j on j.svix_id = i.svix_id";

/// Stores many verified deliveries in one statement; the result is [`receive`]'s for each,
/// in order, as if they had been stored one after another. A payload PostgreSQL refuses fails
/// the whole statement: the caller then stores the deliveries one by one to isolate it.
pub async fn receive_many(
    conn: &mut PgConnection,
    entries: &[OwnedEntry],
) -> Result<Vec<Received>, ReceiveError> {
    let rows: Result<Vec<(String, i64, Option<i64>)>, sqlx::Error> = sqlx::query_as(RECEIVE_MANY)
        .bind(
            entries
                .iter()
                .map(|e| e.svix_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            entries
                .iter()
                .map(|e| e.event_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            entries
                .iter()
                .map(|e| e.payload.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(entries.iter().map(|e| e.svix_timestamp).collect::<Vec<_>>())
        .bind(
            entries
                .iter()
                .map(|e| e.svix_signature.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(entries.iter().map(|e| e.kind).collect::<Vec<_>>())
        .bind(QUEUE)
        .bind(MAX_ATTEMPTS)
        .fetch_all(&mut *conn)
        .await;
    let mut stored: std::collections::HashMap<String, (i64, Option<i64>)> = match rows {
        Ok(rows) => rows
            .into_iter()
            .map(|(id, inbox, job)| (id, (inbox, job)))
            .collect(),
        Err(sqlx::Error::Database(e)) if e.code().is_some_and(|c| c.starts_with("22")) => {
            return Err(ReceiveError::Unstorable(e.message().to_owned()));
        }
        Err(e) => return Err(ReceiveError::Database(e)),
    };
    // The first entry of a svix-id gets the new rows; any repeat is a duplicate.
    let received: Vec<Received> = entries
        .iter()
        .map(|entry| match stored.remove(&entry.svix_id) {
            Some((inbox_id, job_id)) => Received {
                new: true,
                inbox_id: Some(inbox_id),
                job_id,
            },
            None => Received {
                new: false,
                inbox_id: None,
                job_id: None,
            },
        })
        .collect();
    let duplicates: Vec<&str> = entries
        .iter()
        .zip(&received)
        .filter(|(_, r)| !r.new)
        .map(|(e, _)| e.svix_id.as_str())
        .collect();
    count_duplicates(conn, &duplicates).await?;
    Ok(received)
}

/// A signed delivery that is not a Clerk envelope.
#[derive(Debug, Clone)]
pub struct RejectedDelivery<'a> {
    /// `svix-id`.
    pub svix_id: &'a SvixId,
    /// This attempt's `svix-timestamp`.
    pub svix_timestamp: i64,
    /// Why it was rejected.
    pub reason: &'a str,
    /// The raw body.
    pub body: &'a [u8],
}

const REJECT: &str = "
insert into onboard.rejected_delivery (svix_id, svix_timestamp, reason, body)
values ($1, $2, $3, $4)
on conflict (svix_id) do update
   set attempts = rejected_delivery.attempts + 1, last_seen_at = now(),
       svix_timestamp = excluded.svix_timestamp, reason = excluded.reason, body = excluded.body";

/// Records a rejected delivery (one row per `svix-id`; a retry counts another attempt).
pub async fn reject(
    conn: &mut PgConnection,
    delivery: RejectedDelivery<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(REJECT)
        .bind(delivery.svix_id.as_str())
        .bind(delivery.svix_timestamp)
        .bind(delivery.reason)
        .bind(delivery.body)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_needs_a_type_and_an_object_data() {
        assert!(matches!(
            ClerkEnvelope::parse(b"[]"),
            Err(EnvelopeError::Shape(_))
        ));
        assert!(matches!(
            ClerkEnvelope::parse(b"not json"),
            Err(EnvelopeError::Shape(_))
        ));
        assert!(matches!(
            ClerkEnvelope::parse(br#"{"type":"user.created"}"#),
            Err(EnvelopeError::Shape(_))
        ));
        assert!(matches!(
            ClerkEnvelope::parse(br#"{"type":"user.created","data":[1]}"#),
            Err(EnvelopeError::Shape(_))
        ));
        assert_eq!(
            ClerkEnvelope::parse(br#"{"type":"","data":{}}"#),
            Err(EnvelopeError::EventType)
        );
    }

    #[test]
    fn unknown_fields_and_types_are_accepted() {
        let envelope =
            ClerkEnvelope::parse(br#"{"type":"brand.new","data":{"x":[1,{"y":null}]},"extra":1}"#)
                .unwrap();
        assert_eq!(envelope.route, Route::Ignore);
        let envelope =
            ClerkEnvelope::parse(br#"{"type":"user.created","data":{},"object":"event"}"#).unwrap();
        assert_eq!(envelope.route, Route::Job("clerk.user.created"));
    }

    #[test]
    fn organization_created_needs_an_organization_id_and_gets_its_job() {
        assert_eq!(
            ClerkEnvelope::parse(br#"{"type":"organization.created","data":{"id":"user_1"}}"#),
            Err(EnvelopeError::OrganizationId)
        );
        assert_eq!(
            ClerkEnvelope::parse(br#"{"type":"organization.created","data":{}}"#),
            Err(EnvelopeError::OrganizationId)
        );
        let body = br#"{"type":"organization.created","data":{"id":"org_1","name":"Acme","slug":7,"created_by":"user_9"}}"#;
        let envelope = ClerkEnvelope::parse(body).unwrap();
        assert_eq!(envelope.route, Route::Job(ORGANIZATION_CREATED_KIND));
        let request = organization_created(body).unwrap();
        assert_eq!(request.source, Source::Webhook);
        assert_eq!(request.org_id.as_str(), "org_1");
        assert_eq!(request.name.as_deref(), Some("Acme"));
        assert_eq!(request.slug, None);
        assert_eq!(
            request.creator.user_id.as_ref().map(ClerkUserId::as_str),
            Some("user_9")
        );
    }

    #[test]
    fn every_routed_type_is_a_clerk_job_named_after_it() {
        for (event_type, kind) in ROUTED {
            assert_eq!(kind, format!("clerk.{event_type}"));
            assert_eq!(
                ClerkEnvelope::parse(
                    format!(r#"{{"type":"{event_type}","data":{{"id":"org_1"}}}}"#).as_bytes()
                )
                .unwrap()
                .route,
                Route::Job(kind)
            );
        }
    }

    #[test]
    fn only_a_new_job_asks_for_a_wake_up() {
        let received = |job_id| Received {
            new: true,
            inbox_id: Some(1),
            job_id,
        };
        assert_eq!(received(Some(7)).queue_to_wake(), Some(QUEUE));
        assert_eq!(received(None).queue_to_wake(), None);
    }

    #[test]
    fn svix_ids_refuse_dots_and_spaces() {
        assert!(SvixId::parse("msg_p5jXN8AQM9LWM0D4loKWxJek").is_ok());
        assert!(SvixId::parse("msg.1").is_err());
        assert!(SvixId::parse("msg 1").is_err());
        assert!(SvixId::parse("").is_err());
    }
}
