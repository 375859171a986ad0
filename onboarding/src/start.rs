//! The onboarding saga's entry point and read model: one saga per Clerk organization, started
//! by whoever asks first (the `organization.created` webhook's job or `POST /v1/onboarding`),
//! and the API's idempotency records. The saga's step workers live elsewhere; `start` creates
//! the saga row, its step rows and the first step's job.

use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::id::{ClerkOrgId, IdempotencyKey};
use crate::request::OnboardingRequest;

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

/// The outcome of [`start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The organization's saga (new or existing).
    pub onboarding_id: i64,
    /// True when this call created it (and enqueued its first step).
    pub created: bool,
}

/// The saga's row and its steps' rows (the CTEs both start statements share), then `$tail`.
macro_rules! start_sql {
    ($tail:literal) => {
        concat!(
            "
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
)",
            $tail
        )
    };
}

/// Inserts the saga (with the inbox row that asked for it, if any), its step rows and, unless
/// the caller runs the first steps itself, the first step's job, in one statement; no row when
/// the organization already has a saga.
/// Parameters: $1 org id, $2 source, $3 request json, $4 step names, $5 first job kind,
/// $6 queue, $7 max attempts, $8 first step, $9 inbox id (nullable), $10 enqueue the first job.
const START: &str = start_sql!(
    ",
first_job as (
    insert into onboard.job (kind, queue, args, max_attempts, unique_key)
    select $5, $6, jsonb_build_object('onboarding_id', saga.id, 'run', 1), $7,
           'onboarding:' || saga.id || ':' || $8::text
      from saga, pg_notify('onboard_job', $6)
     where $10::bool
    returning id
)
select saga.id, (select id from first_job) from saga"
);

/// [`START`] for a caller that runs the first steps itself: no job insert and no NOTIFY. Same
/// parameters; $5–$8 and $10 are unused.
const START_FOR_CALLER: &str = start_sql!("\nselect saga.id, null::bigint from saga");

const FIND_ID: &str = "select id from onboard.onboarding where clerk_org_id = $1";

/// True when `organization.deleted` tombstoned the organization. The share lock serialises
/// this check with a concurrent deletion (which updates the row); a deletion that inserts the
/// tombstone after this check finds the saga and cancels it.
const DELETED: &str = "
select deleted_at is not null from onboard.organization where clerk_org_id = $1 for share";

/// Why [`start`] started nothing.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The organization was deleted: it is never onboarded (API: `409 organization_deleted`).
    #[error("organization {0} was deleted")]
    OrganizationDeleted(String),
    /// The database failed; retrying may help.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Starts the organization's onboarding unless it already has one: inserts the saga, its step
/// rows and the first step's job (unique key `onboarding:<id>:create_org_record`) on the
/// caller's connection or transaction (`&mut *tx`). Returns the existing saga otherwise, and
/// refuses an organization that was deleted.
pub async fn start(
    conn: &mut PgConnection,
    request: &OnboardingRequest,
) -> Result<Started, StartError> {
    start_with_inbox(conn, request, None, FirstJob::Enqueue).await
}

/// Who runs a new saga's first step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstJob {
    /// Its job, enqueued with the saga.
    Enqueue,
    /// The caller, in the transaction that started the saga: no job is enqueued.
    Caller,
}

/// [`start`], recording `inbox_id` as the delivery that asked for the saga when it is new.
async fn start_with_inbox(
    conn: &mut PgConnection,
    request: &OnboardingRequest,
    inbox_id: Option<i64>,
    first_job: FirstJob,
) -> Result<Started, StartError> {
    let deleted: Option<bool> = sqlx::query_scalar(DELETED)
        .bind(request.org_id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    if deleted == Some(true) {
        return Err(StartError::OrganizationDeleted(
            request.org_id.as_str().to_owned(),
        ));
    }
    loop {
        let sql = match first_job {
            FirstJob::Enqueue => START,
            FirstJob::Caller => START_FOR_CALLER,
        };
        let row: Option<(i64, Option<i64>)> = sqlx::query_as(sql)
            .bind(request.org_id.as_str())
            .bind(request.source.as_str())
            .bind(sqlx::types::Json(request))
            .bind(&STEPS[..])
            .bind(FIRST_STEP_KIND)
            .bind(QUEUE)
            .bind(STEP_JOB_MAX_ATTEMPTS)
            .bind(STEPS[0])
            .bind(inbox_id)
            .bind(first_job == FirstJob::Enqueue)
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
    /// The organization was deleted before its creation was processed: it is not onboarded.
    #[error("organization {0} was deleted")]
    OrganizationDeleted(String),
    /// The database failed; retrying may help.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<StartError> for InboxStartError {
    fn from(error: StartError) -> Self {
        match error {
            StartError::OrganizationDeleted(org) => InboxStartError::OrganizationDeleted(org),
            StartError::Database(e) => InboxStartError::Database(e),
        }
    }
}

impl InboxStartError {
    /// True when retrying cannot help (everything but database errors).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, InboxStartError::Database(_))
    }
}

const INBOX_EVENT: &str = "select event_type, payload from onboard.inbox where id = $1";

/// Starts the onboarding asked for by the `organization.created` delivery stored in inbox row
/// `inbox_id`, on the caller's connection or transaction, with its first step's job enqueued:
/// builds the request from the stored payload ([`crate::inbox::organization_created_from`]) and
/// calls [`start`], so the webhook and the API share one saga per organization, whoever asks
/// first. A new saga records `inbox_id`; an existing one is returned unchanged, so running this
/// twice is harmless. (The `clerk.organization.created` job reads the delivery itself, to apply
/// it to the directory too, and calls [`start_from_payload_for_caller`].)
pub async fn start_from_inbox(
    conn: &mut PgConnection,
    inbox_id: i64,
) -> Result<Started, InboxStartError> {
    let row: Option<(String, Option<sqlx::types::Json<serde_json::Value>>)> =
        sqlx::query_as(INBOX_EVENT)
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
    // A payload past its retention is gone: nothing to start from, for good.
    let payload = payload.ok_or(InboxStartError::Payload {
        inbox_id,
        source: crate::inbox::EnvelopeError::Shape(
            "the payload is gone (past its retention)".into(),
        ),
    })?;
    Ok(
        start_from_payload(conn, inbox_id, &payload.0, FirstJob::Enqueue)
            .await?
            .0,
    )
}

/// [`start_from_inbox`] for a caller that has read the delivery's payload (and applied it to
/// the directory) and runs a new saga's first steps itself, in the same transaction (the
/// worker runs the steps that touch only our database there): a new saga gets no first job.
/// Also returns the request, as stored in a new saga's row.
pub async fn start_from_payload_for_caller(
    conn: &mut PgConnection,
    inbox_id: i64,
    payload: &serde_json::Value,
) -> Result<(Started, OnboardingRequest), InboxStartError> {
    start_from_payload(conn, inbox_id, payload, FirstJob::Caller).await
}

/// Builds the request from inbox row `inbox_id`'s stored payload and starts its saga.
async fn start_from_payload(
    conn: &mut PgConnection,
    inbox_id: i64,
    payload: &serde_json::Value,
    first_job: FirstJob,
) -> Result<(Started, OnboardingRequest), InboxStartError> {
    let request = crate::inbox::organization_created_from(payload)
        .map_err(|source| InboxStartError::Payload { inbox_id, source })?;
    let started = start_with_inbox(conn, &request, Some(inbox_id), first_job).await?;
    Ok((started, request))
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
    /// The organization was deleted: nothing started, the key stays unused.
    OrganizationDeleted,
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
            let started = match start(&mut tx, request).await {
                Ok(started) => started,
                Err(StartError::OrganizationDeleted(_)) => {
                    tx.rollback().await?;
                    return Ok(IdempotentStart::OrganizationDeleted);
                }
                Err(StartError::Database(e)) => return Err(e),
            };
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
