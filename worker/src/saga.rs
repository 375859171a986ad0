//! The onboarding saga's job handlers: each step, each compensation (`undo_<step>`), the Clerk
//! metadata merge when a saga ends, and offboarding.
//!
//! Every handler holds its saga's row lock for the whole attempt, external call included, so
//! work on one organization is serialised: a cancellation or compensation never races a step
//! in flight. A step's success, its output, the next job and the fenced completion of the
//! step's own job commit in one transaction; so does a final failure with the compensations
//! it starts.

use std::sync::Arc;
use std::time::Duration;

use jobs::{AnyJob, JobContext, JobError, KindOptions, Kinds, QueueConfig, RetryPolicy};
use onboarding::saga::{self, EMAIL_QUEUE, OFFBOARD_KIND, SYNC_METADATA_KIND, Saga};
use onboarding::start::{QUEUE, STEP_MAX_ATTEMPTS, STEPS};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};

use crate::provider::{
    AccountStatus, ClerkClient, Email, ProviderError, ResendClient, TwilioClient,
};
use crate::runtime::Registry;

/// The provider clients the saga calls.
#[derive(Debug, Clone)]
pub struct Providers {
    /// Twilio's Accounts API.
    pub twilio: TwilioClient,
    /// Resend's emails API.
    pub resend: ResendClient,
    /// Clerk's Backend API.
    pub clerk: ClerkClient,
    /// The welcome email's sender.
    pub email_from: String,
}

/// Why an attempt failed, as the saga sees it.
#[derive(Debug)]
enum StepError {
    /// Try again later (after the provider's `Retry-After` when given).
    Retry(String, Option<Duration>),
    /// Retrying cannot help.
    Permanent(String),
}

impl From<ProviderError> for StepError {
    fn from(error: ProviderError) -> Self {
        match error {
            ProviderError::Permanent { .. } => StepError::Permanent(error.to_string()),
            other => {
                let after = other.retry_after();
                StepError::Retry(other.to_string(), after)
            }
        }
    }
}

impl From<sqlx::Error> for StepError {
    fn from(error: sqlx::Error) -> Self {
        StepError::Retry(format!("database: {error}"), None)
    }
}

impl From<StepError> for JobError {
    fn from(error: StepError) -> Self {
        match error {
            StepError::Permanent(message) => JobError::Permanent(message),
            StepError::Retry(message, Some(after)) => JobError::RetryAfter(after, message),
            StepError::Retry(message, None) => JobError::Retry(message),
        }
    }
}

fn retry(error: impl std::fmt::Display) -> JobError {
    JobError::retry(error)
}

/// Options of the saga's job kinds: a short backoff (a few minutes at most) and a timeout
/// longer than the provider clients' own.
fn kinds() -> Kinds {
    Kinds::new(KindOptions {
        queue: QUEUE.to_owned(),
        max_attempts: onboarding::start::STEP_JOB_MAX_ATTEMPTS,
        retry: RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
            jitter: 0.2,
        },
        timeout: Duration::from_secs(60),
        unique_completed: false,
    })
}

/// Adds the `onboarding` and `email` queues and every saga kind's handler.
pub fn register(mut registry: Registry, pool: PgPool, providers: Arc<Providers>) -> Registry {
    // Each attempt holds a connection for its external call: keep in-flight attempts few.
    let mut onboarding = QueueConfig::new(QUEUE).kinds(kinds());
    onboarding.max_in_flight = 8;
    onboarding.batch_size = 8;
    let mut email = QueueConfig::new(EMAIL_QUEUE).kinds(kinds());
    email.max_in_flight = 4;
    email.batch_size = 4;
    registry = registry.queue(onboarding).queue(email);
    for step in STEPS {
        let (pool, providers) = (pool.clone(), providers.clone());
        registry = registry.handle(saga::step_kind(step), move |job, ctx| {
            run_step(pool.clone(), providers.clone(), step, job, ctx)
        });
    }
    for step in [
        "create_org_record",
        "default_permissions",
        "twilio_subaccount",
    ] {
        let (pool, providers) = (pool.clone(), providers.clone());
        registry = registry.handle(saga::undo_kind(step), move |job, ctx| {
            run_undo(pool.clone(), providers.clone(), step, job, ctx)
        });
    }
    let start_pool = pool.clone();
    registry = registry.handle(
        onboarding::inbox::ORGANIZATION_CREATED_KIND,
        move |job, ctx| start_onboarding(start_pool.clone(), job, ctx),
    );
    let (sync_pool, sync_providers) = (pool.clone(), providers.clone());
    registry = registry.handle(SYNC_METADATA_KIND, move |job, _ctx| {
        sync_metadata(sync_pool.clone(), sync_providers.clone(), job)
    });
    registry.handle(OFFBOARD_KIND, move |job, ctx| {
        offboard(pool.clone(), providers.clone(), job, ctx)
    })
}

/// `clerk.organization.created`: starts the organization's saga from the stored delivery
/// (one per org, whoever asks first) and completes this job, in one transaction.
async fn start_onboarding(pool: PgPool, job: AnyJob, ctx: JobContext) -> Result<(), JobError> {
    let inbox_id = job.args["inbox_id"]
        .as_i64()
        .ok_or_else(|| JobError::permanent("job arguments lack inbox_id"))?;
    let mut tx = pool.begin().await.map_err(retry)?;
    // The organization's record from the event itself (last writer wins on its updated_at)…
    onboarding::clerk_event::handle(&mut tx, &job.kind, inbox_id)
        .await
        .map_err(|e| {
            if e.is_permanent() {
                JobError::permanent(e)
            } else {
                retry(e)
            }
        })?;
    // An organization deleted before its creation was processed is not onboarded: its deletion
    // (serialised with this transaction by the organization row's lock) already offboarded it.
    let deleted: bool = sqlx::query_scalar(
        "select coalesce(bool_or(o.deleted_at is not null), false)
           from onboard.inbox i join onboard.organization o on o.clerk_org_id = i.payload->'data'->>'id'
          where i.id = $1",
    )
    .bind(inbox_id)
    .fetch_one(&mut *tx)
    .await
    .map_err(retry)?;
    if deleted {
        jobs::complete(&mut tx, ctx.id, ctx.attempt)
            .await
            .map_err(retry)?;
        tx.commit().await.map_err(retry)?;
        tracing::info!(inbox_id, "organization already deleted: not onboarding it");
        return Ok(());
    }
    // …and its one saga, in the same transaction.
    let started = onboarding::start::start_from_inbox(&mut tx, inbox_id)
        .await
        .map_err(|e| {
            if e.is_permanent() {
                JobError::permanent(e)
            } else {
                retry(e)
            }
        })?;
    if !jobs::complete(&mut tx, ctx.id, ctx.attempt)
        .await
        .map_err(retry)?
    {
        return Err(retry(format!(
            "attempt {} no longer holds job {}",
            ctx.attempt, ctx.id
        )));
    }
    tx.commit().await.map_err(retry)?;
    tracing::info!(
        inbox_id,
        onboarding = started.onboarding_id,
        created = started.created,
        "onboarding started"
    );
    Ok(())
}

/// Discards this attempt's own job in the transaction that recorded the failure, and commits:
/// the runtime's later acknowledgement of the attempt is then a fenced no-op.
async fn discard_and_commit(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    ctx: &JobContext,
    message: String,
) -> JobError {
    let done = async {
        jobs::discard(&mut tx, ctx.id, ctx.attempt, &message).await?;
        tx.commit().await
    };
    match done.await {
        Ok(()) => JobError::Permanent(message),
        Err(error) => retry(error),
    }
}

fn give_up(step: &str) -> StepError {
    StepError::Permanent(format!(
        "{step} gave up after {STEP_MAX_ATTEMPTS} attempts; the last ended without an answer (timeout, panic or lost lease)"
    ))
}

fn saga_id(job: &AnyJob) -> Result<i64, JobError> {
    job.args["onboarding_id"]
        .as_i64()
        .ok_or_else(|| JobError::permanent("job arguments lack onboarding_id"))
}

async fn run_step(
    pool: PgPool,
    providers: Arc<Providers>,
    step: &'static str,
    job: AnyJob,
    ctx: JobContext,
) -> Result<(), JobError> {
    let id = saga_id(&job)?;
    let mut tx = pool.begin().await.map_err(retry)?;
    let Some(saga) = saga::lock(&mut tx, id).await.map_err(retry)? else {
        return Err(JobError::permanent(format!("no onboarding {id}")));
    };
    if saga.state != "running" {
        // Cancelled or compensating since this job was enqueued: nothing to do.
        saga::step_skipped(&mut tx, id, step).await.map_err(retry)?;
        jobs::complete(&mut tx, ctx.id, ctx.attempt)
            .await
            .map_err(retry)?;
        return tx.commit().await.map_err(retry);
    }
    let result = if ctx.attempt > STEP_MAX_ATTEMPTS {
        // The last real attempt ended outside this handler (timeout, panic, lost lease).
        Err(give_up(step))
    } else {
        saga::step_started(&mut tx, id, step).await.map_err(retry)?;
        perform(&mut tx, &providers, step, &saga).await
    };
    match result {
        Ok(output) => {
            saga::step_succeeded(&mut tx, &saga, step, &output)
                .await
                .map_err(retry)?;
            jobs::complete(&mut tx, ctx.id, ctx.attempt)
                .await
                .map_err(retry)?;
            tx.commit().await.map_err(retry)
        }
        Err(StepError::Retry(message, after)) if ctx.attempt < STEP_MAX_ATTEMPTS => {
            tracing::warn!(onboarding = id, step, %message, "step attempt failed; retrying");
            saga::step_attempt_failed(&mut tx, id, step, &message)
                .await
                .map_err(retry)?;
            tx.commit().await.map_err(retry)?;
            Err(StepError::Retry(message, after).into())
        }
        Err(StepError::Retry(message, _) | StepError::Permanent(message)) => {
            tracing::error!(onboarding = id, step, %message, "step failed for good");
            saga::step_failed(&mut tx, &saga, step, &message)
                .await
                .map_err(retry)?;
            Err(discard_and_commit(tx, &ctx, message).await)
        }
    }
}

async fn perform(
    conn: &mut PgConnection,
    providers: &Providers,
    step: &str,
    saga: &Saga,
) -> Result<Value, StepError> {
    match step {
        "create_org_record" => create_org_record(conn, saga).await,
        "default_permissions" => {
            let org = organization_id(conn, saga).await?;
            let grants = onboarding::permissions::grant_defaults(conn, org).await?;
            Ok(json!({ "organization_id": org, "grants": grants }))
        }
        "twilio_subaccount" => twilio_subaccount(conn, &providers.twilio, saga).await,
        "welcome_email" => welcome_email(conn, providers, saga).await,
        other => Err(StepError::Permanent(format!("unknown step `{other}`"))),
    }
}

fn text(value: &Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

async fn create_org_record(conn: &mut PgConnection, saga: &Saga) -> Result<Value, StepError> {
    let request = &saga.request;
    let org = onboarding::directory::OrgUpsert {
        clerk_org_id: saga.clerk_org_id.clone(),
        name: text(&request["name"]),
        slug: text(&request["slug"]),
        image_url: None,
        created_by: text(&request["creator"]["user_id"]),
        public_metadata: None,
        // Older than any Clerk event: a real `organization.*` payload always wins.
        updated_at_ms: 0,
    };
    onboarding::directory::upsert_organization(conn, &org).await?;
    let id = organization_id(conn, saga).await?;
    sqlx::query(
        "update onboard.organization set onboarding_status = 'pending', updated_at = now()
          where id = $1 and onboarding_status in ('pending', 'failed')",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(json!({ "organization_id": id }))
}

async fn organization_id(conn: &mut PgConnection, saga: &Saga) -> Result<i64, StepError> {
    onboarding::directory::organization_id(conn, &saga.clerk_org_id)
        .await?
        .ok_or_else(|| {
            StepError::Permanent(format!("organization {} has no record", saga.clerk_org_id))
        })
}

fn friendly_name(saga: &Saga) -> String {
    format!("org:{}", saga.clerk_org_id)
}

/// Lists before creating and after an ambiguous failure, and adopts an active match: one
/// sub-account per organization however often this runs.
async fn twilio_subaccount(
    conn: &mut PgConnection,
    twilio: &TwilioClient,
    saga: &Saga,
) -> Result<Value, StepError> {
    let name = friendly_name(saga);
    let existing = twilio
        .list_subaccounts(&name, Some(AccountStatus::Active))
        .await?;
    let (account, adopted) = match existing.into_iter().next() {
        Some(account) => (account, true),
        None => match twilio.create_subaccount(&name).await {
            Ok(account) => (account, false),
            Err(error) if error.is_ambiguous() => {
                let found = twilio
                    .list_subaccounts(&name, Some(AccountStatus::Active))
                    .await?;
                match found.into_iter().next() {
                    Some(account) => (account, true),
                    None => {
                        return Err(StepError::Retry(
                            format!("create was ambiguous ({error}); no account yet"),
                            None,
                        ));
                    }
                }
            }
            Err(error) => return Err(error.into()),
        },
    };
    sqlx::query("update onboard.organization set twilio_subaccount_sid = $2, updated_at = now() where clerk_org_id = $1")
        .bind(&saga.clerk_org_id)
        .bind(&account.sid)
        .execute(&mut *conn)
        .await?;
    Ok(json!({ "sid": account.sid, "adopted": adopted }))
}

const WELCOME_TEXT: &str = "Hello {name},\n\n{org} is ready: your workspace, roles and phone account are set up.\n\nWelcome aboard!\n";
const WELCOME_HTML: &str = "<p>Hello {name},</p><p><strong>{org}</strong> is ready: your workspace, roles and phone account are set up.</p><p>Welcome aboard!</p>";

fn render(template: &str, name: &str, org: &str, html: bool) -> String {
    let escape = |s: &str| {
        if html {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        } else {
            s.to_owned()
        }
    };
    template
        .replace("{name}", &escape(name))
        .replace("{org}", &escape(org))
}

/// Sends the welcome email once: our own `sent_at` marker first, the provider's idempotency key
/// `welcome/<org>/<user>` for a crash between the send and our commit.
async fn welcome_email(
    conn: &mut PgConnection,
    providers: &Providers,
    saga: &Saga,
) -> Result<Value, StepError> {
    let previous = saga::step_output(conn, saga.id, "welcome_email").await?;
    if previous.get("sent_at").is_some() {
        return Ok(previous);
    }
    let creator = &saga.request["creator"];
    let user_id = text(&creator["user_id"]);
    let mut recipient = text(&creator["email"]);
    let mut first_name = text(&creator["first_name"]);
    if recipient.is_none()
        && let Some(user) = &user_id
    {
        recipient = onboarding::directory::primary_email(conn, user).await?;
    }
    if recipient.is_none()
        && let Some(user) = &user_id
    {
        match providers.clerk.get_user(user).await {
            Ok(clerk_user) => {
                recipient = clerk_user.primary_email;
                first_name = first_name.or(clerk_user.first_name);
            }
            Err(error) if error.is_not_found() => {}
            Err(error) => return Err(error.into()),
        }
    }
    let Some(recipient) = recipient else {
        return Err(StepError::Permanent(
            "the creator has no email address anywhere".into(),
        ));
    };
    let org_name = text(&saga.request["name"]).unwrap_or_else(|| saga.clerk_org_id.clone());
    let name = first_name.unwrap_or_else(|| "there".into());
    let email = Email {
        from: providers.email_from.clone(),
        to: vec![recipient.clone()],
        subject: format!("Welcome to {org_name}"),
        html: Some(render(WELCOME_HTML, &name, &org_name, true)),
        text: Some(render(WELCOME_TEXT, &name, &org_name, false)),
    };
    let key = format!(
        "welcome/{}/{}",
        saga.clerk_org_id,
        user_id.as_deref().unwrap_or("creator")
    );
    let email_id = providers.resend.send_email(&email, &key).await?;
    Ok(json!({ "sent_at": chrono::Utc::now(), "email_id": email_id, "recipient": recipient }))
}

async fn run_undo(
    pool: PgPool,
    providers: Arc<Providers>,
    step: &'static str,
    job: AnyJob,
    ctx: JobContext,
) -> Result<(), JobError> {
    let id = saga_id(&job)?;
    let mut tx = pool.begin().await.map_err(retry)?;
    let Some(saga) = saga::lock(&mut tx, id).await.map_err(retry)? else {
        return Err(JobError::permanent(format!("no onboarding {id}")));
    };
    if saga.state != "compensating" {
        jobs::complete(&mut tx, ctx.id, ctx.attempt)
            .await
            .map_err(retry)?;
        return tx.commit().await.map_err(retry);
    }
    let result = if ctx.attempt > STEP_MAX_ATTEMPTS {
        Err(give_up(step))
    } else {
        undo(&mut tx, &providers, step, &saga).await
    };
    match result {
        Ok(output) => {
            saga::compensation_succeeded(&mut tx, id, step, &output)
                .await
                .map_err(retry)?;
            jobs::complete(&mut tx, ctx.id, ctx.attempt)
                .await
                .map_err(retry)?;
            tx.commit().await.map_err(retry)
        }
        Err(StepError::Retry(message, after)) if ctx.attempt < STEP_MAX_ATTEMPTS => {
            tx.commit().await.map_err(retry)?;
            Err(StepError::Retry(message, after).into())
        }
        Err(StepError::Retry(message, _) | StepError::Permanent(message)) => {
            saga::compensation_failed(&mut tx, id, step, &message)
                .await
                .map_err(retry)?;
            Err(discard_and_commit(tx, &ctx, message).await)
        }
    }
}

async fn undo(
    conn: &mut PgConnection,
    providers: &Providers,
    step: &str,
    saga: &Saga,
) -> Result<Value, StepError> {
    match step {
        "twilio_subaccount" => {
            let closed = close_subaccounts(&providers.twilio, &saga.clerk_org_id).await?;
            Ok(json!({ "closed": closed }))
        }
        "default_permissions" => {
            let revoked =
                match onboarding::directory::organization_id(conn, &saga.clerk_org_id).await? {
                    Some(org) => onboarding::permissions::revoke_defaults(conn, org).await?,
                    None => 0,
                };
            Ok(json!({ "revoked": revoked }))
        }
        "create_org_record" => {
            // Kept for audit, marked failed.
            sqlx::query(
                "update onboard.organization set onboarding_status = 'failed', updated_at = now()
                  where clerk_org_id = $1 and onboarding_status <> 'deleted'",
            )
            .bind(&saga.clerk_org_id)
            .execute(&mut *conn)
            .await?;
            Ok(json!({ "marked": "failed" }))
        }
        other => Err(StepError::Permanent(format!(
            "no compensation for `{other}`"
        ))),
    }
}

/// Closes every active or suspended sub-account named `org:<id>`, recorded or not; none left
/// counts as done. Returns the SIDs closed.
async fn close_subaccounts(
    twilio: &TwilioClient,
    clerk_org_id: &str,
) -> Result<Vec<String>, StepError> {
    let name = format!("org:{clerk_org_id}");
    let mut closed = Vec::new();
    for status in [AccountStatus::Active, AccountStatus::Suspended] {
        for account in twilio.list_subaccounts(&name, Some(status)).await? {
            match twilio
                .update_status(&account.sid, AccountStatus::Closed)
                .await
            {
                Ok(_) => closed.push(account.sid),
                Err(error) if error.is_not_found() => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(closed)
}

/// Merges the saga's current state into the organization's Clerk `public_metadata`.
async fn sync_metadata(
    pool: PgPool,
    providers: Arc<Providers>,
    job: AnyJob,
) -> Result<(), JobError> {
    let id = saga_id(&job)?;
    let row: Option<(String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "select clerk_org_id, state, updated_at from onboard.onboarding where id = $1",
    )
    .bind(id)
    .fetch_optional(&pool)
    .await
    .map_err(retry)?;
    let Some((org, state, updated_at)) = row else {
        return Err(JobError::permanent(format!("no onboarding {id}")));
    };
    let metadata = json!({ "onboarding": { "state": state, "updated_at": updated_at } });
    match providers
        .clerk
        .merge_org_public_metadata(&org, metadata)
        .await
    {
        Ok(()) => Ok(()),
        Err(error) => Err(StepError::from(error).into()),
    }
}

/// Offboards a deleted organization: a running saga is cancelled first and offboarding waits
/// until it is terminal; then every sub-account named `org:<id>` is closed.
async fn offboard(
    pool: PgPool,
    providers: Arc<Providers>,
    job: AnyJob,
    ctx: JobContext,
) -> Result<(), JobError> {
    let Some(org) = job.args["clerk_org_id"].as_str().map(str::to_owned) else {
        return Err(JobError::permanent("job arguments lack clerk_org_id"));
    };
    let mut tx = pool.begin().await.map_err(retry)?;
    if let Some(saga) = saga::lock_by_org(&mut tx, &org).await.map_err(retry)? {
        if saga.state == "running" {
            let cancelled = saga::cancel(&mut tx, saga.id).await.map_err(retry)?;
            tx.commit().await.map_err(retry)?;
            tracing::info!(
                onboarding = saga.id,
                cancelled,
                "organization deleted: waiting for its onboarding to end"
            );
            return Err(JobError::Snooze(Duration::from_secs(1)));
        }
        if !saga.is_terminal() {
            return Err(JobError::Snooze(Duration::from_secs(1)));
        }
    }
    let closed = close_subaccounts(&providers.twilio, &org)
        .await
        .map_err(JobError::from)?;
    sqlx::query("update onboard.organization set onboarding_status = 'deleted', updated_at = now() where clerk_org_id = $1")
        .bind(&org)
        .execute(&mut *tx)
        .await
        .map_err(retry)?;
    jobs::complete(&mut tx, ctx.id, ctx.attempt)
        .await
        .map_err(retry)?;
    tx.commit().await.map_err(retry)?;
    tracing::info!(%org, ?closed, "organization offboarded");
    Ok(())
}
