//! The onboarding saga's entry point and read model: one saga per Clerk organization, started
//! by whoever asks first (the `organization.created` webhook's job or `POST /v1/onboarding`),
//! and the API's idempotency records. The saga's step workers live elsewhere; `start` creates
//! the saga row, its step rows and the first step's job.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

/// The queue the saga's step jobs run on.
pub const QUEUE: &str = "onboarding";
/// The saga's steps, in order (DESIGN.md §4).
pub const STEPS: [&str; 4] = [
    "create_org_record",
    "default_permissions",
    "twilio_subaccount",
    "welcome_email",
];
/// The kind of the first step's job.
pub const FIRST_STEP_KIND: &str = "onboarding.create_org_record";
/// Attempts of a step job before it is discarded (and the saga compensates).
pub const STEP_MAX_ATTEMPTS: i32 = 10;
/// The step jobs' `max_attempts`: one more than [`STEP_MAX_ATTEMPTS`]. The handler gives up
/// itself at its last real attempt; the extra one only settles the saga (compensate) when that
/// last attempt ended outside the handler's control (timeout, panic, lost lease), so a step job
/// is never discarded by the runtime behind the saga's back.
pub const STEP_JOB_MAX_ATTEMPTS: i32 = STEP_MAX_ATTEMPTS + 1;

/// A value that failed to parse; the message says what was expected (never echoes secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub &'static str);

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn parse_prefixed_id(value: &str, prefix: &str, message: &'static str) -> Result<String, Invalid> {
    let rest = value.strip_prefix(prefix).ok_or(Invalid(message))?;
    if rest.is_empty() || value.len() > 128 || !rest.chars().all(is_id_char) {
        return Err(Invalid(message));
    }
    Ok(value.to_owned())
}

/// A Clerk organization id (`org_…`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ClerkOrgId(String);

impl ClerkOrgId {
    /// Parses `org_` followed by letters, digits or `_` (at most 128 characters in all).
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        parse_prefixed_id(value, "org_", "must be a Clerk organization id (org_…)").map(ClerkOrgId)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A Clerk user id (`user_…`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ClerkUserId(String);

impl ClerkUserId {
    /// Parses `user_` followed by letters, digits or `_` (at most 128 characters in all).
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        parse_prefixed_id(value, "user_", "must be a Clerk user id (user_…)").map(ClerkUserId)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, checked for shape only (one `@`, a dotted domain, no spaces).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Parses `local@domain.tld`, at most 254 characters, no whitespace or control characters.
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        const MESSAGE: &str = "must be an email address";
        if value.len() > 254 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Invalid(MESSAGE));
        }
        let (local, domain) = value.split_once('@').ok_or(Invalid(MESSAGE))?;
        let domain_ok = !domain.contains('@')
            && domain.contains('.')
            && domain.split('.').all(|label| !label.is_empty());
        if local.is_empty() || !domain_ok {
            return Err(Invalid(MESSAGE));
        }
        Ok(EmailAddress(value.to_owned()))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An `Idempotency-Key`: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a key: 1 to 255 visible ASCII characters.
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        if value.is_empty() || value.len() > 255 || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Invalid("must be 1 to 255 visible ASCII characters"));
        }
        Ok(IdempotencyKey(value.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who asked for the onboarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Clerk's `organization.created` webhook.
    Webhook,
    /// `POST /v1/onboarding`.
    Api,
}

impl Source {
    /// The name stored in `onboarding.source`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Webhook => "webhook",
            Source::Api => "api",
        }
    }
}

/// The organization's creator, as far as the request knows them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Creator {
    /// Their Clerk user id.
    pub user_id: Option<ClerkUserId>,
    /// Their primary email (the welcome email's recipient when given).
    pub email: Option<EmailAddress>,
    /// Their first name, for the welcome email.
    pub first_name: Option<String>,
}

/// A request to onboard one organization: the input of the saga's first step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OnboardingRequest {
    /// The organization.
    pub org_id: ClerkOrgId,
    /// Its display name.
    pub name: Option<String>,
    /// Its slug.
    pub slug: Option<String>,
    /// Who created it.
    pub creator: Creator,
    /// Webhook or API.
    pub source: Source,
}

impl OnboardingRequest {
    /// SHA-256 of the request's canonical JSON: equal requests, equal fingerprints.
    pub fn fingerprint(&self) -> [u8; 32] {
        let json = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(json).into()
    }
}

/// The outcome of [`start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The organization's saga (new or existing).
    pub onboarding_id: i64,
    /// True when this call created it (and enqueued its first step).
    pub created: bool,
}

/// Inserts the saga (with the inbox row that asked for it, if any), its step rows and the first
/// step's job, in one statement; no row when the organization already has a saga.
/// Parameters: $1 org id, $2 source, $3 request json, $4 step names, $5 first job kind,
/// $6 queue, $7 max attempts, $8 first step, $9 inbox id (nullable).
const START: &str = "
with saga as (
    insert into onboard.onboarding (clerk_org_id, source, request, inbox_id)
    values ($1, $2, $3::jsonb, $9::bigint)
    on conflict (clerk_org_id) do nothing
    returning id
),
saga_steps as (
    insert into onboard.onboarding_step (onboarding_id, name, position)
    select saga.id, step.name, step.position
      from saga cross join unnest($4::text[]) with ordinality as step(name, position)
),
first_job as (
    insert into onboard.job (kind, queue, args, max_attempts, unique_key)
    select $5, $6, jsonb_build_object('onboarding_id', saga.id), $7,
           'onboarding:' || saga.id || ':' || $8::text
      from saga
    returning id
)
select saga.id, (select id from first_job) from saga";

const FIND_ID: &str = "select id from onboard.onboarding where clerk_org_id = $1";

/// Starts the organization's onboarding unless it already has one: inserts the saga, its step
/// rows and the first step's job (unique key `onboarding:<id>:create_org_record`) on the
/// caller's connection or transaction (`&mut *tx`). Returns the existing saga otherwise.
pub async fn start(
    conn: &mut PgConnection,
    request: &OnboardingRequest,
) -> Result<Started, sqlx::Error> {
    start_with_inbox(conn, request, None).await
}

/// [`start`], recording `inbox_id` as the delivery that asked for the saga when it is new.
async fn start_with_inbox(
    conn: &mut PgConnection,
    request: &OnboardingRequest,
    inbox_id: Option<i64>,
) -> Result<Started, sqlx::Error> {
    loop {
        let row: Option<(i64, Option<i64>)> = sqlx::query_as(START)
            .bind(request.org_id.as_str())
            .bind(request.source.as_str())
            .bind(sqlx::types::Json(request))
            .bind(&STEPS[..])
            .bind(FIRST_STEP_KIND)
            .bind(QUEUE)
            .bind(STEP_JOB_MAX_ATTEMPTS)
            .bind(STEPS[0])
            .bind(inbox_id)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some((onboarding_id, _job)) = row {
            return Ok(Started {
                onboarding_id,
                created: true,
            });
        }
        // ON CONFLICT waited for any concurrent starter to commit; this new statement sees it.
        // If that saga vanished in between, try again.
        let existing: Option<i64> = sqlx::query_scalar(FIND_ID)
            .bind(request.org_id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(onboarding_id) = existing {
            return Ok(Started {
                onboarding_id,
                created: false,
            });
        }
    }
}

/// Why [`start_from_inbox`] started nothing.
#[derive(Debug, thiserror::Error)]
pub enum InboxStartError {
    /// The job names an inbox row that does not exist.
    #[error("inbox row {0} does not exist")]
    MissingInbox(i64),
    /// The inbox row holds another event type.
    #[error("inbox row {inbox_id} is a `{event_type}` event, not organization.created")]
    NotOrganizationCreated {
        /// The row.
        inbox_id: i64,
        /// Its event type.
        event_type: String,
    },
    /// The stored payload is not an `organization.created` the saga can start from.
    #[error("inbox row {inbox_id} cannot start an onboarding: {source}")]
    Payload {
        /// The row.
        inbox_id: i64,
        /// What is wrong with it.
        source: crate::inbox::EnvelopeError,
    },
    /// The database failed; retrying may help.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl InboxStartError {
    /// True when retrying cannot help (everything but database errors).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, InboxStartError::Database(_))
    }
}

const INBOX_EVENT: &str = "select event_type, payload::text from onboard.inbox where id = $1";

/// Starts the onboarding asked for by the `organization.created` delivery stored in inbox row
/// `inbox_id` (what the `clerk.organization.created` job does), on the caller's connection or
/// transaction: builds the request from the stored payload
/// ([`crate::inbox::organization_created`]) and calls [`start`], so the webhook and the API
/// share one saga per organization, whoever asks first. A new saga records `inbox_id`; an
/// existing one is returned unchanged, so running this twice is harmless.
pub async fn start_from_inbox(
    conn: &mut PgConnection,
    inbox_id: i64,
) -> Result<Started, InboxStartError> {
    let row: Option<(String, String)> = sqlx::query_as(INBOX_EVENT)
        .bind(inbox_id)
        .fetch_optional(&mut *conn)
        .await?;
    let (event_type, payload) = row.ok_or(InboxStartError::MissingInbox(inbox_id))?;
    if event_type != "organization.created" {
        return Err(InboxStartError::NotOrganizationCreated {
            inbox_id,
            event_type,
        });
    }
    let request = crate::inbox::organization_created(payload.as_bytes())
        .map_err(|source| InboxStartError::Payload { inbox_id, source })?;
    Ok(start_with_inbox(conn, &request, Some(inbox_id)).await?)
}

/// What an idempotent start did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotentStart {
    /// The key was new: this call ran [`start`].
    Fresh(Started),
    /// The key was used before with the same request: its saga.
    Replayed {
        /// The saga the first call answered with.
        onboarding_id: i64,
    },
    /// The key was used before with another request.
    KeyReused,
}

const CLAIM_KEY: &str = "
insert into onboard.api_idempotency (api_key_id, idempotency_key, request_hash)
values ($1, $2, $3)
on conflict (api_key_id, idempotency_key) do nothing";

const READ_KEY: &str = "
select request_hash, onboarding_id from onboard.api_idempotency
 where api_key_id = $1 and idempotency_key = $2";

const SAVE_KEY: &str = "
update onboard.api_idempotency set onboarding_id = $3
 where api_key_id = $1 and idempotency_key = $2";

/// Starts an onboarding at most once per (API key, `Idempotency-Key`), in one transaction:
/// claim the key, start, record the saga, commit. A concurrent call with the same key waits on
/// the key's index entry until the first commits, then replays its answer.
pub async fn start_idempotent(
    pool: &PgPool,
    api_key_id: i64,
    key: &IdempotencyKey,
    request: &OnboardingRequest,
) -> Result<IdempotentStart, sqlx::Error> {
    let hash = request.fingerprint();
    loop {
        let mut tx = pool.begin().await?;
        let claimed = sqlx::query(CLAIM_KEY)
            .bind(api_key_id)
            .bind(key.as_str())
            .bind(&hash[..])
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if claimed {
            let started = start(&mut tx, request).await?;
            sqlx::query(SAVE_KEY)
                .bind(api_key_id)
                .bind(key.as_str())
                .bind(started.onboarding_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(IdempotentStart::Fresh(started));
        }
        let existing: Option<(Vec<u8>, Option<i64>)> = sqlx::query_as(READ_KEY)
            .bind(api_key_id)
            .bind(key.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        tx.rollback().await?;
        match existing {
            Some((stored, _)) if stored != hash => return Ok(IdempotentStart::KeyReused),
            Some((_, Some(onboarding_id))) => {
                return Ok(IdempotentStart::Replayed { onboarding_id });
            }
            // The first holder's saga was deleted, or the key vanished in between: claim again.
            Some((_, None)) | None => {}
        }
    }
}

/// One step of a saga, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct StepView {
    /// The step's name (`create_org_record`, …).
    pub name: String,
    /// `pending`, `running`, `done`, `failed`, `compensating`, `compensated` or `skipped`.
    pub state: String,
    /// Attempts so far.
    pub attempts: i32,
    /// The last attempt's error, if it failed.
    pub last_error: Option<String>,
}

/// A saga and its steps: the body of `GET /v1/onboarding/{id}` (DESIGN.md §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OnboardingView {
    /// The saga's id.
    pub id: i64,
    /// The Clerk organization id.
    pub org_id: String,
    /// The saga's state (`running`, `completed`, …).
    pub state: String,
    /// Its steps, in order.
    pub steps: Vec<StepView>,
}

const STEPS_OF: &str = "
select name, state, attempts, last_error from onboard.onboarding_step
 where onboarding_id = $1 order by position";

async fn view(
    pool: &PgPool,
    row: Option<(i64, String, String)>,
) -> Result<Option<OnboardingView>, sqlx::Error> {
    let Some((id, org_id, state)) = row else {
        return Ok(None);
    };
    let steps = sqlx::query_as(STEPS_OF).bind(id).fetch_all(pool).await?;
    Ok(Some(OnboardingView {
        id,
        org_id,
        state,
        steps,
    }))
}

/// The saga with this id, if any.
pub async fn get(pool: &PgPool, id: i64) -> Result<Option<OnboardingView>, sqlx::Error> {
    let row =
        sqlx::query_as("select id, clerk_org_id, state from onboard.onboarding where id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    view(pool, row).await
}

/// The organization's saga, if it has one.
pub async fn find_by_org(
    pool: &PgPool,
    org_id: &ClerkOrgId,
) -> Result<Option<OnboardingView>, sqlx::Error> {
    let row = sqlx::query_as(
        "select id, clerk_org_id, state from onboard.onboarding where clerk_org_id = $1",
    )
    .bind(org_id.as_str())
    .fetch_optional(pool)
    .await?;
    view(pool, row).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clerk_ids_need_their_prefix_and_a_plain_tail() {
        assert!(ClerkOrgId::parse("org_2g7np7Hrk0SN6kj5EDMLDaKNL0S").is_ok());
        assert!(ClerkOrgId::parse("org_").is_err());
        assert!(ClerkOrgId::parse("user_abc").is_err());
        assert!(ClerkOrgId::parse("org_a.b").is_err());
        assert!(ClerkUserId::parse("user_2g7np7Hrk0SN6kj5EDMLDaKNL0S").is_ok());
        assert!(ClerkUserId::parse("org_abc").is_err());
    }

    #[test]
    fn email_addresses_are_checked_for_shape() {
        assert!(EmailAddress::parse("ada@example.com").is_ok());
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a da@example.com",
            "a@b@example.com",
            "ada@example..com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(IdempotencyKey::parse("k-1").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("a b").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
    }

    #[test]
    fn equal_requests_have_equal_fingerprints() {
        let request = OnboardingRequest {
            org_id: ClerkOrgId::parse("org_1").unwrap(),
            name: Some("Acme".into()),
            slug: Some("acme".into()),
            creator: Creator::default(),
            source: Source::Api,
        };
        let mut other = request.clone();
        assert_eq!(request.fingerprint(), other.fingerprint());
        other.slug = Some("acme-2".into());
        assert_ne!(request.fingerprint(), other.fingerprint());
    }
}
