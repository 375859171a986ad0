//! Applies one stored Clerk event (an `onboard.inbox` row) to the directory (DESIGN.md §5):
//! the `clerk.<event type>` jobs the ingress enqueues. Everything runs in the caller's
//! transaction, so a job's effects commit with its completion.
//!
//! | kind | effect |
//! |---|---|
//! | `clerk.organization.updated` (and `.created`, see [`ORGANIZATION_CREATED_KIND`]) | upsert the organization (LWW) |
//! | `clerk.organization.deleted` | tombstone it (`onboarding_status = 'deleted'`), end its memberships, enqueue one `offboarding.close_org` |
//! | `clerk.user.created` / `.updated` | upsert the user (LWW) |
//! | `clerk.user.deleted` | tombstone the user, purge their personal data from `app_user`, inbox payloads and invitation addresses |
//! | `clerk.organizationMembership.*` | upsert the nested organization and public user data, then upsert / end the membership |
//! | `clerk.organizationInvitation.*` | pending / accepted (active) / revoked row; Clerk sends the email itself |
//!
//! Payloads are parsed leniently (unknown fields ignored, absent optional fields allowed). An
//! event that cannot be applied is a permanent error; database errors are transient unless the
//! payload causes them ([`EventError::is_permanent`]).

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sqlx::PgConnection;

use crate::directory::{
    self, InvitationEvent, InvitationStatus, MembershipEvent, OrgUpsert, PublicUserData,
    RoleMapping, UserUpsert, UserWrite,
};
use crate::id::{ClerkOrgId, ClerkUserId};
use jobs::{NewJob, enqueue};

/// The `clerk.*` kinds the worker runs through [`handle`]. `clerk.organization.created` is not
/// one: its job starts the onboarding saga, whose first step upserts the organization.
pub const KINDS: [&str; 11] = [
    "clerk.organization.updated",
    "clerk.organization.deleted",
    "clerk.user.created",
    "clerk.user.updated",
    "clerk.user.deleted",
    "clerk.organizationMembership.created",
    "clerk.organizationMembership.updated",
    "clerk.organizationMembership.deleted",
    "clerk.organizationInvitation.created",
    "clerk.organizationInvitation.accepted",
    "clerk.organizationInvitation.revoked",
];

/// Also accepted by [`handle`] (it upserts the organization, as the saga's first step does),
/// for replays and tests; the worker routes this kind to the saga instead.
pub const ORGANIZATION_CREATED_KIND: &str = "clerk.organization.created";

/// The kind enqueued when an organization is deleted (cancels its saga, closes its
/// sub-accounts); implemented by the offboarding worker.
pub const OFFBOARD_KIND: &str = "offboarding.close_org";
/// The queue of [`OFFBOARD_KIND`].
pub const OFFBOARD_QUEUE: &str = "onboarding";

/// The arguments of a `clerk.*` job, as the ingress enqueues them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ClerkJobArgs {
    /// The `onboard.inbox` row holding the event.
    pub inbox_id: i64,
    /// Its `svix-id` (for logs).
    #[serde(default)]
    pub svix_id: Option<String>,
}

/// Why an event was not applied.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The job names an inbox row that does not exist.
    #[error("inbox row {0} does not exist")]
    MissingInbox(i64),
    /// Not a kind this handler applies.
    #[error("`{0}` is not a Clerk event kind this handler applies")]
    UnknownKind(String),
    /// The job's kind and the stored event's type disagree.
    #[error("job kind `{kind}` does not match inbox row {inbox_id}, a `{event_type}` event")]
    KindMismatch {
        kind: String,
        inbox_id: i64,
        event_type: String,
    },
    /// The payload lacks what the event needs.
    #[error("inbox row {inbox_id} ({event_type}) cannot be applied: {message}")]
    Invalid {
        inbox_id: i64,
        event_type: String,
        message: String,
    },
    /// The database failed; retrying may help.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl EventError {
    /// True when retrying cannot help: everything but database errors, and the database
    /// errors the payload itself causes (data exceptions, program limits such as an index
    /// entry too large), which would fail the same way on every attempt.
    pub fn is_permanent(&self) -> bool {
        match self {
            EventError::Database(sqlx::Error::Database(e)) => e
                .code()
                .is_some_and(|code| code.starts_with("22") || code.starts_with("54")),
            EventError::Database(_) => false,
            _ => true,
        }
    }
}

/// Applies the event stored in inbox row `inbox_id` as job `kind` (`clerk.<event type>`), with
/// the default role mapping. Idempotent: applying an event twice, or late, changes nothing.
pub async fn handle(conn: &mut PgConnection, kind: &str, inbox_id: i64) -> Result<(), EventError> {
    handle_with(conn, kind, inbox_id, &RoleMapping::default()).await
}

/// [`handle`] with a configured role mapping.
pub async fn handle_with(
    conn: &mut PgConnection,
    kind: &str,
    inbox_id: i64,
    roles: &RoleMapping,
) -> Result<(), EventError> {
    let event = read(conn, kind, inbox_id).await?;
    apply(conn, &event, roles).await
}

/// A Clerk event as stored in its inbox row, read for a job ([`read`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// The `onboard.inbox` row.
    pub inbox_id: i64,
    /// Its event type (`organization.created`, …).
    pub event_type: String,
    /// Its payload.
    pub payload: Value,
}

/// Reads the event stored in inbox row `inbox_id` for job `kind` (`clerk.<event type>`):
/// refuses a kind this module does not apply, a row of another type, and a payload gone past
/// its retention.
pub async fn read(
    conn: &mut PgConnection,
    kind: &str,
    inbox_id: i64,
) -> Result<StoredEvent, EventError> {
    let event_type = kind
        .strip_prefix("clerk.")
        .filter(|_| KINDS.contains(&kind) || kind == ORGANIZATION_CREATED_KIND)
        .ok_or_else(|| EventError::UnknownKind(kind.to_owned()))?;
    let row: Option<(String, Option<sqlx::types::Json<Value>>)> =
        sqlx::query_as("select event_type, payload from onboard.inbox where id = $1")
            .bind(inbox_id)
            .fetch_optional(&mut *conn)
            .await?;
    let (stored_type, payload) = row.ok_or(EventError::MissingInbox(inbox_id))?;
    if stored_type != event_type {
        return Err(EventError::KindMismatch {
            kind: kind.to_owned(),
            inbox_id,
            event_type: stored_type,
        });
    }
    let Some(payload) = payload else {
        return Err(EventError::Invalid {
            inbox_id,
            event_type: stored_type,
            message: "its payload is gone (past its retention)".into(),
        });
    };
    Ok(StoredEvent {
        inbox_id,
        event_type: stored_type,
        payload: payload.0,
    })
}

/// Applies an event [`read`] from the inbox. Idempotent, as [`handle`].
pub async fn apply(
    conn: &mut PgConnection,
    stored: &StoredEvent,
    roles: &RoleMapping,
) -> Result<(), EventError> {
    let event = Event {
        inbox_id: stored.inbox_id,
        event_type: &stored.event_type,
        payload: &stored.payload,
    };
    match event.event_type {
        "organization.created" | "organization.updated" => organization_updated(conn, &event).await,
        "organization.deleted" => organization_deleted(conn, &event).await,
        "user.created" | "user.updated" => user_updated(conn, &event).await,
        "user.deleted" => user_deleted(conn, &event).await,
        "organizationMembership.created" | "organizationMembership.updated" => {
            membership(conn, &event, false, roles).await
        }
        "organizationMembership.deleted" => membership(conn, &event, true, roles).await,
        "organizationInvitation.created" => {
            invitation(conn, &event, InvitationStatus::Pending, roles).await
        }
        "organizationInvitation.accepted" => {
            invitation(conn, &event, InvitationStatus::Accepted, roles).await
        }
        "organizationInvitation.revoked" => {
            invitation(conn, &event, InvitationStatus::Revoked, roles).await
        }
        other => Err(EventError::UnknownKind(format!("clerk.{other}"))),
    }
}

struct Event<'a> {
    inbox_id: i64,
    event_type: &'a str,
    payload: &'a Value,
}

impl Event<'_> {
    fn invalid(&self, message: impl Into<String>) -> EventError {
        EventError::Invalid {
            inbox_id: self.inbox_id,
            event_type: self.event_type.to_owned(),
            message: message.into(),
        }
    }

    /// `data`, parsed as `T`.
    fn data<T: DeserializeOwned>(&self) -> Result<T, EventError> {
        let data = self
            .payload
            .get("data")
            .ok_or_else(|| self.invalid("the envelope has no `data`"))?;
        T::deserialize(data).map_err(|e| self.invalid(format!("`data`: {e}")))
    }

    fn org_id(&self, value: &str, field: &str) -> Result<String, EventError> {
        ClerkOrgId::parse(value)
            .map(|id| id.as_str().to_owned())
            .map_err(|e| self.invalid(format!("`{field}` {e}")))
    }

    fn user_id(&self, value: &str, field: &str) -> Result<String, EventError> {
        ClerkUserId::parse(value)
            .map(|id| id.as_str().to_owned())
            .map_err(|e| self.invalid(format!("`{field}` {e}")))
    }
}

/// `OrganizationJSON`, leniently.
#[derive(Debug, Deserialize)]
struct OrganizationData {
    id: String,
    name: Option<String>,
    slug: Option<String>,
    image_url: Option<String>,
    created_by: Option<String>,
    public_metadata: Option<Value>,
    updated_at: Option<i64>,
}

impl OrganizationData {
    fn upsert(self, clerk_org_id: String) -> Option<OrgUpsert> {
        Some(OrgUpsert {
            clerk_org_id,
            name: self.name,
            slug: self.slug,
            image_url: self.image_url,
            created_by: self.created_by,
            public_metadata: self.public_metadata,
            updated_at_ms: self.updated_at?,
        })
    }
}

async fn organization_updated(
    conn: &mut PgConnection,
    event: &Event<'_>,
) -> Result<(), EventError> {
    let data: OrganizationData = event.data()?;
    let id = event.org_id(&data.id, "data.id")?;
    let upsert = data
        .upsert(id)
        .ok_or_else(|| event.invalid("`data.updated_at` is missing"))?;
    directory::upsert_organization(conn, &upsert).await?;
    Ok(())
}

/// `DeletedObjectJSON`.
#[derive(Debug, Deserialize)]
struct DeletedData {
    id: String,
}

async fn organization_deleted(
    conn: &mut PgConnection,
    event: &Event<'_>,
) -> Result<(), EventError> {
    let data: DeletedData = event.data()?;
    let clerk_org_id = event.org_id(&data.id, "data.id")?;
    // Only the call that lays the tombstone offboards: a second delivery finds it laid and
    // enqueues nothing, even after the first offboarding job finished.
    if let Some(id) = directory::delete_organization(conn, &clerk_org_id).await? {
        directory::end_memberships(conn, id).await?;
        let job = NewJob::new(OFFBOARD_KIND, json!({ "clerk_org_id": clerk_org_id }))
            .queue(OFFBOARD_QUEUE)
            .unique_key(format!("offboard:{clerk_org_id}"));
        enqueue(conn, &job).await?;
    }
    Ok(())
}

/// `UserJSON`, leniently; also a purged payload (`{object, id, deleted: true}`).
#[derive(Debug, Deserialize)]
struct UserData {
    id: String,
    #[serde(default)]
    deleted: bool,
    primary_email_address_id: Option<String>,
    email_addresses: Option<Vec<EmailAddressData>>,
    first_name: Option<String>,
    last_name: Option<String>,
    username: Option<String>,
    image_url: Option<String>,
    updated_at: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct EmailAddressData {
    id: Option<String>,
    email_address: Option<String>,
}

impl UserData {
    fn primary_email(&self) -> Option<String> {
        let primary = self.primary_email_address_id.as_deref()?;
        self.email_addresses
            .iter()
            .flatten()
            .find(|e| e.id.as_deref() == Some(primary))
            .and_then(|e| e.email_address.clone())
    }
}

async fn user_updated(conn: &mut PgConnection, event: &Event<'_>) -> Result<(), EventError> {
    let data: UserData = event.data()?;
    let clerk_user_id = event.user_id(&data.id, "data.id")?;
    if data.deleted {
        // Purged by an earlier `user.deleted`: the user is gone.
        return erase_user(conn, &clerk_user_id).await;
    }
    let updated_at_ms = data
        .updated_at
        .ok_or_else(|| event.invalid("`data.updated_at` is missing"))?;
    let upsert = UserUpsert {
        clerk_user_id,
        primary_email: data.primary_email(),
        first_name: data.first_name,
        last_name: data.last_name,
        username: data.username,
        image_url: data.image_url,
        updated_at_ms,
    };
    if directory::upsert_user(conn, &upsert).await? == UserWrite::Deleted {
        // A late event about a deleted user: its payload must not keep their data.
        directory::purge_user_data(conn, &upsert.clerk_user_id, &[]).await?;
    }
    Ok(())
}

async fn user_deleted(conn: &mut PgConnection, event: &Event<'_>) -> Result<(), EventError> {
    let data: DeletedData = event.data()?;
    let clerk_user_id = event.user_id(&data.id, "data.id")?;
    erase_user(conn, &clerk_user_id).await
}

async fn erase_user(conn: &mut PgConnection, clerk_user_id: &str) -> Result<(), EventError> {
    let email = directory::delete_user(conn, clerk_user_id).await?;
    directory::purge_user_data(conn, clerk_user_id, &email.into_iter().collect::<Vec<_>>()).await?;
    Ok(())
}

/// `OrganizationMembershipJSON`, leniently.
#[derive(Debug, Deserialize)]
struct MembershipData {
    id: String,
    role: String,
    organization: OrganizationData,
    public_user_data: PublicUserDataJson,
    created_at: Option<i64>,
    updated_at: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct PublicUserDataJson {
    user_id: String,
    first_name: Option<String>,
    last_name: Option<String>,
    image_url: Option<String>,
}

async fn membership(
    conn: &mut PgConnection,
    event: &Event<'_>,
    deleted: bool,
    roles: &RoleMapping,
) -> Result<(), EventError> {
    let data: MembershipData = event.data()?;
    let clerk_org_id = event.org_id(&data.organization.id, "data.organization.id")?;
    let clerk_user_id = event.user_id(
        &data.public_user_data.user_id,
        "data.public_user_data.user_id",
    )?;
    let updated_at_ms = data
        .updated_at
        .ok_or_else(|| event.invalid("`data.updated_at` is missing"))?;
    // Lock order, as everywhere: organization, user, membership rows.
    if let Some(org) = data.organization.upsert(clerk_org_id.clone()) {
        directory::upsert_organization(conn, &org).await?;
    }
    let public = PublicUserData {
        clerk_user_id: clerk_user_id.clone(),
        first_name: data.public_user_data.first_name,
        last_name: data.public_user_data.last_name,
        image_url: data.public_user_data.image_url,
        updated_at_ms,
    };
    let user = directory::upsert_public_user_data(conn, &public).await?;
    let event = MembershipEvent {
        clerk_org_id,
        clerk_user_id,
        clerk_membership_id: data.id,
        clerk_role: data.role,
        created_at_ms: data.created_at.unwrap_or(0),
        updated_at_ms,
        deleted,
    };
    directory::apply_membership(conn, &event, roles).await?;
    if user == UserWrite::Deleted {
        directory::purge_user_data(conn, &event.clerk_user_id, &[]).await?;
    }
    Ok(())
}

/// `OrganizationInvitationJSON`, leniently.
#[derive(Debug, Deserialize)]
struct InvitationData {
    id: String,
    email_address: Option<String>,
    role: String,
    organization_id: String,
    user_id: Option<String>,
    updated_at: Option<i64>,
}

async fn invitation(
    conn: &mut PgConnection,
    event: &Event<'_>,
    status: InvitationStatus,
    roles: &RoleMapping,
) -> Result<(), EventError> {
    let data: InvitationData = event.data()?;
    if data.id.is_empty() {
        return Err(event.invalid("`data.id` is empty"));
    }
    let clerk_org_id = event.org_id(&data.organization_id, "data.organization_id")?;
    let clerk_user_id = match data.user_id.as_deref() {
        Some(id) => Some(event.user_id(id, "data.user_id")?),
        None => None,
    };
    let mut email = data.email_address;
    if let Some(address) = &email
        && directory::is_erased_email(conn, address).await?
    {
        // An address of a deleted user: store it nowhere.
        email = None;
        directory::erase_invitation_email(conn, event.inbox_id).await?;
    }
    let event = InvitationEvent {
        clerk_org_id,
        clerk_invitation_id: data.id,
        email,
        clerk_role: data.role,
        status,
        clerk_user_id,
        updated_at_ms: data
            .updated_at
            .ok_or_else(|| event.invalid("`data.updated_at` is missing"))?,
    };
    let user = directory::apply_invitation(conn, &event, roles).await?;
    if let Some(user) = user
        && directory::is_deleted_user(conn, &user).await?
    {
        directory::purge_user_data(conn, &user, &[]).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_the_ingress_routes_is_handled_here_or_by_the_saga() {
        for (_, kind) in crate::inbox::ROUTED {
            assert!(
                KINDS.contains(&kind) || kind == ORGANIZATION_CREATED_KIND,
                "{kind} has no handler"
            );
        }
        assert!(!KINDS.contains(&ORGANIZATION_CREATED_KIND));
    }

    #[test]
    fn the_primary_email_is_the_entry_named_by_primary_email_address_id() {
        let data: UserData = serde_json::from_value(json!({
            "id": "user_1", "primary_email_address_id": "idn_2", "unknown": {"x": 1},
            "email_addresses": [{"id": "idn_1", "email_address": "a@example.com"},
                                {"id": "idn_2", "email_address": "b@example.com"}],
            "updated_at": 1
        }))
        .unwrap();
        assert_eq!(data.primary_email().as_deref(), Some("b@example.com"));
    }
}
