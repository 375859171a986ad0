//! The onboarding saga's job handlers: each step, each compensation (`undo_<step>`), the Clerk
//! metadata merge when a saga ends, and offboarding.
//!
//! One driver runs every step and every compensation ([`Action`]): lock the saga's row, check
//! the saga is still in the action's phase and run, act, then record success, a retry or the
//! final failure. The lock is held for the whole attempt, external call included, so work on
//! one organization is serialised: a cancellation or compensation never races a step in
//! flight. A step's success, its output, the next job and the fenced completion of the step's
//! own job commit in one transaction; so does a final failure with the compensations it
//! starts. An attempt that no longer holds its job (lease lost, cancelled) commits nothing.

use std::sync::Arc;
use std::time::Duration;

use jobs::{AnyJob, JobContext, JobError, KindOptions, Kinds, QueueConfig, RetryPolicy};
use onboarding::saga::{self, EMAIL_QUEUE, JobTarget, OFFBOARD_KIND, SYNC_METADATA_KIND, Saga};
use onboarding::start::{QUEUE, STEPS};
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
    // Each attempt holds a connection across its external call; `sizing` fits these to the pool.
    let mut onboarding = QueueConfig::new(QUEUE).kinds(kinds());
    onboarding.max_in_flight = 32;
    onboarding.batch_size = 16;
    let mut email = QueueConfig::new(EMAIL_QUEUE).kinds(kinds());
    email.max_in_flight = 16;
    email.batch_size = 16;
    registry = registry.queue(onboarding).queue(email);
    for step in STEPS {
        let (pool, providers) = (pool.clone(), providers.clone());
        registry = registry.handle(saga::step_kind(step), move |job, ctx| {
            run_action(
                pool.clone(),
                providers.clone(),
                Action::Step(step),
                job,
                ctx,
            )
        });
    }
    for step in saga::compensable_steps() {
        let (pool, providers) = (pool.clone(), providers.clone());
        registry = registry.handle(saga::undo_kind(step), move |job, ctx| {
            run_action(
                pool.clone(),
                providers.clone(),
                Action::Undo(step),
                job,
                ctx,
            )
        });
    }
    let reconcile_pool = pool.clone();
    registry = registry
        .periodic(saga::reconcile_job())
        .handle(saga::RECONCILE_KIND, move |_job, ctx| {
            reconcile(reconcile_pool.clone(), ctx)
        });
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
    let event_error =
        |e: onboarding::clerk_event::EventError| JobError::classified(&e, e.is_permanent());
    // The organization's record from the event itself (last writer wins on its updated_at)…
    let event = onboarding::clerk_event::read(&mut tx, &job.kind, inbox_id)
        .await
        .map_err(event_error)?;
    onboarding::clerk_event::apply(
        &mut tx,
        &event,
        &onboarding::directory::RoleMapping::default(),
    )
    .await
    .map_err(event_error)?;
    // …and its one saga, in the same transaction, with the steps that touch only our database.
    // An organization deleted before its creation was processed is not onboarded: its deletion
    // (serialised with this transaction by the organization row's lock) already offboarded it.
    let (started, request) =
        match onboarding::start::start_from_payload_for_caller(&mut tx, inbox_id, &event.payload)
            .await
        {
            Ok(started) => started,
            Err(onboarding::start::InboxStartError::OrganizationDeleted(_)) => {
                commit_held(tx, &ctx, Verdict::Complete).await?;
                tracing::info!(inbox_id, "organization already deleted: not onboarding it");
                return Ok(());
            }
            Err(e) => return Err(JobError::classified(&e, e.is_permanent())),
        };
    let settled = if started.created {
        // The row this transaction just inserted (and so holds): no need to read and lock it.
        let saga = Saga {
            id: started.onboarding_id,
            clerk_org_id: request.org_id.as_str().to_owned(),
            state: "running".into(),
            request: serde_json::to_value(&request).map_err(retry)?,
            run: 1,
        };
        advance(&mut tx, &saga, STEPS[0], own(&ctx)).await?
    } else {
        None
    };
    match settled {
        Some(held) => commit_settled(tx, &ctx, held).await?,
        None => commit_held(tx, &ctx, Verdict::Complete).await?,
    }
    tracing::info!(
        inbox_id,
        onboarding = started.onboarding_id,
        created = started.created,
        "onboarding started"
    );
    Ok(())
}

/// The fence of the attempt a handler runs.
fn own(ctx: &JobContext) -> saga::Attempt {
    saga::Attempt {
        job_id: ctx.id,
        attempt: ctx.attempt,
    }
}

/// Moves the saga on to `step`: runs it here, in the caller's transaction, when it touches
/// only our database (and so on for the local steps after it), then enqueues the job of the
/// first step that calls a provider and completes `own`'s job with the last local step's
/// success: `Some(held)` (false: the attempt no longer holds its job, roll back). `None` when
/// `step` calls a provider: its job is enqueued and the caller settles `own`'s job.
///
/// A job's first attempt runs the local steps bare: when one fails, the attempt fails and its
/// retry runs them again. Later attempts run them under a savepoint and, when one fails, roll
/// them back and leave them to `step`'s own job (`None` too), so that retries and compensation
/// take the usual path.
async fn advance(
    conn: &mut PgConnection,
    saga: &Saga,
    step: &'static str,
    own: saga::Attempt,
) -> Result<Option<bool>, StepError> {
    if saga::is_local(step) && own.attempt == 1 {
        return match run_local_steps(conn, saga, step, own).await {
            Ok(held) => Ok(Some(held)),
            Err(StepError::Retry(message, _) | StepError::Permanent(message)) => Err(
                StepError::Retry(format!("{step}, run with this job: {message}"), None),
            ),
        };
    }
    if saga::is_local(step) {
        let mut local = sqlx::Connection::begin(&mut *conn).await?;
        match run_local_steps(&mut local, saga, step, own).await {
            Ok(held) => {
                local.commit().await?;
                return Ok(Some(held));
            }
            Err(error) => {
                local.rollback().await?;
                tracing::warn!(
                    onboarding = saga.id,
                    step,
                    ?error,
                    "running the step in its own job"
                );
            }
        }
    }
    saga::enqueue_step(conn, saga, step).await?;
    Ok(None)
}

/// Runs `step` and the local steps after it, then records their successes, enqueues the job of
/// the first step that is not local and completes `own`'s job, in one statement. Returns
/// whether `own` held its job.
async fn run_local_steps(
    conn: &mut PgConnection,
    saga: &Saga,
    mut step: &'static str,
    own: saga::Attempt,
) -> Result<bool, StepError> {
    let mut organization = None;
    let mut done = Vec::new();
    loop {
        let output = perform_local(conn, step, saga, organization).await?;
        organization = organization.or(output["organization_id"].as_i64());
        done.push((step, output));
        match saga::next_step(step) {
            Some(next) if saga::is_local(next) => step = next,
            _ => break,
        }
    }
    // Their successes are recorded together, with the next step's job and `own`'s completion.
    let done: Vec<(&str, &Value)> = done.iter().map(|(step, output)| (*step, output)).collect();
    Ok(saga::steps_succeeded(conn, saga, &done, own).await?)
}

/// What an attempt does with its own job in the transaction that records its outcome.
enum Verdict<'a> {
    /// Completes it (the step or compensation is settled).
    Complete,
    /// Leaves it running: the runtime records the retry after this commit.
    Retry,
    /// Discards it with this message (failed for good).
    Discard(&'a str),
}

/// Commits a transaction that already completed this attempt's own job (`held`), or rolls
/// it back when the attempt no longer held it.
async fn commit_settled(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    ctx: &JobContext,
    held: bool,
) -> Result<(), JobError> {
    if !held {
        tx.rollback().await.map_err(retry)?;
        return Err(fenced_out(ctx));
    }
    tx.commit().await.map_err(retry)?;
    ctx.settle();
    Ok(())
}

/// Applies the verdict to this attempt's own job, fenced by its attempt, and commits; when
/// the attempt no longer holds the job (its lease was lost, an operator cancelled it) it rolls
/// back instead: a fenced-out attempt commits nothing. The runtime's later acknowledgement of
/// the attempt is then a fenced no-op.
async fn commit_held(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    ctx: &JobContext,
    verdict: Verdict<'_>,
) -> Result<(), JobError> {
    let settles = !matches!(verdict, Verdict::Retry);
    let held = match verdict {
        Verdict::Complete => jobs::complete(&mut tx, ctx.id, ctx.attempt).await,
        Verdict::Retry => jobs::hold(&mut tx, ctx.id, ctx.attempt).await,
        Verdict::Discard(message) => jobs::discard(&mut tx, ctx.id, ctx.attempt, message).await,
    }
    .map_err(retry)?;
    if !held {
        tx.rollback().await.map_err(retry)?;
        return Err(fenced_out(ctx));
    }
    tx.commit().await.map_err(retry)?;
    if settles {
        ctx.settle();
    }
    Ok(())
}

fn fenced_out(ctx: &JobContext) -> JobError {
    tracing::warn!(
        job = ctx.id,
        attempt = ctx.attempt,
        "attempt no longer holds its job: committed nothing"
    );
    retry(format!(
        "attempt {} no longer holds job {}: committed nothing",
        ctx.attempt, ctx.id
    ))
}

fn give_up(step: &str, ctx: &JobContext) -> StepError {
    StepError::Permanent(format!(
        "{step} gave up after {} attempts; the last ended without an answer (timeout, panic or lost lease)",
        ctx.max_attempts - 1
    ))
}

/// What a saga job does: a step, or the compensation (`undo_<step>`) of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Step(&'static str),
    Undo(&'static str),
}

impl Action {
    fn step(self) -> &'static str {
        match self {
            Action::Step(step) | Action::Undo(step) => step,
        }
    }

    /// The saga state in which the action runs.
    fn phase(self) -> &'static str {
        match self {
            Action::Step(_) => "running",
            Action::Undo(_) => "compensating",
        }
    }

    /// The saga left the action's phase (or run) since the job was enqueued.
    async fn skip(self, conn: &mut PgConnection, saga: &Saga) -> Result<(), sqlx::Error> {
        match self {
            Action::Step(step) => saga::step_skipped(conn, saga.id, step).await,
            Action::Undo(_) => Ok(()),
        }
    }

    /// Acts; a step's attempt is counted when its outcome is recorded (no start mark: one
    /// statement fewer, and an attempt that commits nothing counted nothing either way).
    async fn act(
        self,
        conn: &mut PgConnection,
        providers: &Providers,
        saga: &Saga,
        attempt: StepAttempt<'_>,
    ) -> Result<Value, StepError> {
        match self {
            Action::Step(step) => perform(conn, providers, step, saga, attempt).await,
            Action::Undo(step) => undo(conn, providers, step, saga).await,
        }
    }

    /// Records success; `Some(held)` when this also completed the attempt's own job.
    async fn succeeded(
        self,
        conn: &mut PgConnection,
        saga: &Saga,
        output: &Value,
        own: saga::Attempt,
    ) -> Result<Option<bool>, StepError> {
        match self {
            Action::Step(step) => {
                match saga::step_attempt_succeeded(conn, saga, step, output, own).await? {
                    saga::StepSucceeded::Settled { held } => Ok(Some(held)),
                    saga::StepSucceeded::Local(next) => advance(conn, saga, next, own).await,
                }
            }
            Action::Undo(step) => {
                saga::compensation_succeeded(conn, saga, step, output).await?;
                Ok(None)
            }
        }
    }

    async fn attempt_failed(
        self,
        conn: &mut PgConnection,
        saga: &Saga,
        message: &str,
    ) -> Result<(), sqlx::Error> {
        match self {
            Action::Step(step) => saga::step_attempt_failed(conn, saga.id, step, message).await,
            Action::Undo(step) => {
                saga::compensation_attempt_failed(conn, saga, step, message).await
            }
        }
    }

    async fn failed(
        self,
        conn: &mut PgConnection,
        saga: &Saga,
        message: &str,
        acted: bool,
    ) -> Result<(), sqlx::Error> {
        match self {
            Action::Step(step) if acted => {
                saga::step_attempt_failed_for_good(conn, saga, step, message).await
            }
            Action::Step(step) => saga::step_failed(conn, saga, step, message).await,
            Action::Undo(step) => saga::compensation_failed(conn, saga, step, message).await,
        }
    }
}

/// The one saga driver: lock, check, act, then success, retry or final failure. A job's
/// last attempt (`max_attempts`) only settles the saga: it fails the action for good when
/// the attempt before it ended outside this handler (timeout, panic, lost lease).
async fn run_action(
    pool: PgPool,
    providers: Arc<Providers>,
    action: Action,
    job: AnyJob,
    ctx: JobContext,
) -> Result<(), JobError> {
    let target = JobTarget::from_args(&job.args)
        .ok_or_else(|| JobError::permanent("job arguments lack onboarding_id"))?;
    let id = target.onboarding_id;
    let step = action.step();
    let mut tx = pool.begin().await.map_err(retry)?;
    let Some(saga) = saga::lock(&mut tx, id).await.map_err(retry)? else {
        return Err(JobError::permanent(format!("no onboarding {id}")));
    };
    // Under the saga's lock: an attempt that lost its job does not act at all.
    let Some(previous) = saga::attempt_holds(&mut tx, id, step, own(&ctx))
        .await
        .map_err(retry)?
    else {
        return Err(fenced_out(&ctx));
    };
    if saga.run != target.run || saga.state != action.phase() {
        // Cancelled, compensating, ended or restarted since this job was enqueued.
        if saga.run == target.run {
            action.skip(&mut tx, &saga).await.map_err(retry)?;
        }
        return commit_held(tx, &ctx, Verdict::Complete).await;
    }
    let acted = ctx.attempt < ctx.max_attempts;
    let result = if acted {
        let attempt = StepAttempt {
            // The first attempt of a run's step job: no attempt before it can have reached a provider.
            first_try: ctx.attempt == 1 && saga.run == 1,
            previous: &previous,
        };
        action.act(&mut tx, &providers, &saga, attempt).await
    } else {
        Err(give_up(step, &ctx))
    };
    match result {
        Ok(output) => match action.succeeded(&mut tx, &saga, &output, own(&ctx)).await? {
            Some(held) => commit_settled(tx, &ctx, held).await,
            None => commit_held(tx, &ctx, Verdict::Complete).await,
        },
        Err(StepError::Retry(message, after)) if ctx.attempt < ctx.max_attempts - 1 => {
            tracing::warn!(onboarding = id, ?action, %message, "attempt failed; retrying");
            action
                .attempt_failed(&mut tx, &saga, &message)
                .await
                .map_err(retry)?;
            commit_held(tx, &ctx, Verdict::Retry).await?;
            Err(StepError::Retry(message, after).into())
        }
        Err(StepError::Retry(message, _) | StepError::Permanent(message)) => {
            tracing::error!(onboarding = id, ?action, %message, "failed for good");
            action
                .failed(&mut tx, &saga, &message, acted)
                .await
                .map_err(retry)?;
            commit_held(tx, &ctx, Verdict::Discard(&message)).await?;
            Err(JobError::Permanent(message))
        }
    }
}

/// The periodic reconciler: settles sagas left without a live job (one replica at a time).
async fn reconcile(pool: PgPool, ctx: JobContext) -> Result<(), JobError> {
    let mut tx = pool.begin().await.map_err(retry)?;
    let done = saga::reconcile(&mut tx).await.map_err(retry)?;
    commit_held(tx, &ctx, Verdict::Complete).await?;
    if let Some(done) = done.filter(|d| *d != saga::Reconciled::default()) {
        tracing::warn!(?done, "reconciled onboardings without a live job");
    }
    Ok(())
}

/// What a step's attempt knows before it acts.
#[derive(Debug, Clone, Copy)]
struct StepAttempt<'a> {
    /// The first attempt of the saga's first run: no attempt before it can have reached a provider.
    first_try: bool,
    /// The step's stored output (`{}` when none).
    previous: &'a Value,
}

async fn perform(
    conn: &mut PgConnection,
    providers: &Providers,
    step: &str,
    saga: &Saga,
    attempt: StepAttempt<'_>,
) -> Result<Value, StepError> {
    match step {
        "twilio_subaccount" => {
            twilio_subaccount(conn, &providers.twilio, saga, attempt.first_try).await
        }
        "welcome_email" => welcome_email(conn, providers, saga, attempt.previous).await,
        local => perform_local(conn, local, saga, None).await,
    }
}

/// Performs a step that touches only our database ([`saga::LOCAL_STEPS`]); `organization` is
/// the organization's id when a step before it in this transaction already read it.
async fn perform_local(
    conn: &mut PgConnection,
    step: &str,
    saga: &Saga,
    organization: Option<i64>,
) -> Result<Value, StepError> {
    match step {
        "create_org_record" => create_org_record(conn, saga).await,
        "default_permissions" => {
            let org = match organization {
                Some(org) => org,
                None => organization_id(conn, saga).await?,
            };
            let grants = onboarding::permissions::grant_defaults(conn, org).await?;
            Ok(json!({ "organization_id": org, "grants": grants }))
        }
        other => Err(StepError::Permanent(format!("unknown step `{other}`"))),
    }
}

fn text(value: &Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

/// Upserts the organization from the saga's request and marks it `pending`. The request has no
/// Clerk clock (`0`), so it never beats a stored Clerk snapshot: when the record already holds
/// one (as when the saga started from `organization.created`, whose job stored it), marking is
/// all there is to do.
async fn create_org_record(conn: &mut PgConnection, saga: &Saga) -> Result<Value, StepError> {
    if let Some((id, Some(clock))) = mark_pending(conn, saga).await?
        && clock > 0
    {
        return Ok(json!({ "organization_id": id }));
    }
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
    let (id, _) = mark_pending(conn, saga).await?.ok_or_else(|| {
        StepError::Permanent(format!("organization {} has no record", saga.clerk_org_id))
    })?;
    Ok(json!({ "organization_id": id }))
}

/// [`MARK_PENDING`]: the organization's id and its Clerk clock, if it has a record.
async fn mark_pending(
    conn: &mut PgConnection,
    saga: &Saga,
) -> Result<Option<(i64, Option<i64>)>, sqlx::Error> {
    sqlx::query_as(MARK_PENDING)
        .bind(&saga.clerk_org_id)
        .fetch_optional(&mut *conn)
        .await
}

/// Marks the organization `pending` unless it is past that (`active`, `deleted`) and returns
/// its id and Clerk clock either way (no row without a record), in one statement.
const MARK_PENDING: &str = "
with marked as (
    update onboard.organization set onboarding_status = 'pending', updated_at = now()
     where clerk_org_id = $1 and onboarding_status in ('pending', 'failed')
    returning id, clerk_updated_at
)
select id, clerk_updated_at from marked
union all
select id, clerk_updated_at from onboard.organization
 where clerk_org_id = $1 and not exists (select 1 from marked)";

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

/// Lists before creating (except at the first attempt of the saga's first run, which nothing
/// can have preceded: the organization's one saga, its step's one job) and after an ambiguous
/// failure, and adopts an active match: one sub-account per organization however often this
/// runs.
async fn twilio_subaccount(
    conn: &mut PgConnection,
    twilio: &TwilioClient,
    saga: &Saga,
    first_try: bool,
) -> Result<Value, StepError> {
    let name = friendly_name(saga);
    let existing = if first_try {
        Vec::new()
    } else {
        twilio
            .list_subaccounts(&name, Some(AccountStatus::Active))
            .await?
    };
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
/// `welcome/<org>/<user>` for a crash between the send and our commit. An attempt after such a
/// crash sends the same payload and gets the first send's id back; if the creator's address or
/// name changed in between, Resend refuses the key with another payload, which proves the first
/// send: the step is done (`already_sent`, no id).
async fn welcome_email(
    conn: &mut PgConnection,
    providers: &Providers,
    saga: &Saga,
    previous: &Value,
) -> Result<Value, StepError> {
    if previous.get("sent_at").is_some() {
        return Ok(previous.clone());
    }
    let creator = &saga.request["creator"];
    let user_id = text(&creator["user_id"]);
    let mut recipient = text(&creator["email"]);
    let mut first_name = text(&creator["first_name"]);
    // Each source gives the address and the first name together, so that an attempt after a
    // crash, reading another source, sends the same payload under the same key.
    if recipient.is_none()
        && let Some(user) = &user_id
        && let Some(known) = onboarding::directory::addressee(conn, user).await?
    {
        recipient = Some(known.email);
        first_name = first_name.or(known.first_name);
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
    match providers.resend.send_email(&email, &key).await {
        Ok(email_id) => Ok(
            json!({ "sent_at": chrono::Utc::now(), "email_id": email_id, "recipient": recipient }),
        ),
        // Resend remembers a key only for a send it accepted: an earlier attempt of this step
        // sent the welcome email, with another payload (the creator's address or name changed
        // before this attempt), and its commit was lost. Sent once is done; its id is unknown.
        Err(error) if error.code() == Some(ALREADY_SENT_UNDER_KEY) => {
            tracing::warn!(onboarding = saga.id, %key, "welcome email already sent by an earlier attempt, with another payload");
            Ok(json!({ "sent_at": chrono::Utc::now(), "email_id": null, "already_sent": true }))
        }
        Err(error) => Err(error.into()),
    }
}

/// Resend's answer to a key it accepted a send under, sent again with another payload.
const ALREADY_SENT_UNDER_KEY: &str = "invalid_idempotent_request";

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
    let id = JobTarget::from_args(&job.args)
        .ok_or_else(|| JobError::permanent("job arguments lack onboarding_id"))?
        .onboarding_id;
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

/// How long offboarding waits for its organization's onboarding to end before closing the
/// sub-accounts anyway (the reconciler ends every saga long before, unless a queue is paused).
const OFFBOARD_MAX_WAIT: Duration = Duration::from_secs(3600);

/// Offboards a deleted organization: a running saga is cancelled first and offboarding waits
/// (snoozing longer as it waits, at most [`OFFBOARD_MAX_WAIT`]) until it is terminal; then
/// every sub-account named `org:<id>` is closed.
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
    if let Some(saga) = saga::lock_by_org(&mut tx, &org).await.map_err(retry)?
        && !saga.is_terminal()
    {
        let cancelled = if saga.state == "running" {
            saga::cancel(&mut tx, saga.id).await.map_err(retry)?
        } else {
            false
        };
        let waited: f64 = sqlx::query_scalar(
            "select extract(epoch from now() - created_at)::float8 from onboard.job where id = $1",
        )
        .bind(ctx.id)
        .fetch_one(&mut *tx)
        .await
        .map_err(retry)?;
        let waited = Duration::from_secs_f64(waited.max(0.0));
        if waited < OFFBOARD_MAX_WAIT {
            commit_held(tx, &ctx, Verdict::Retry).await?;
            tracing::info!(
                onboarding = saga.id,
                cancelled,
                "organization deleted: waiting for its onboarding to end"
            );
            return Err(JobError::Snooze(
                (waited / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            ));
        }
        // Past the wait: a cancelled saga compensates by itself, one past its point of no
        // return creates no sub-account any more; close what exists now.
        tracing::warn!(
            onboarding = saga.id,
            state = %saga.state,
            "organization deleted: its onboarding has not ended; offboarding anyway"
        );
    }
    let closed = close_subaccounts(&providers.twilio, &org)
        .await
        .map_err(JobError::from)?;
    sqlx::query("update onboard.organization set onboarding_status = 'deleted', updated_at = now() where clerk_org_id = $1")
        .bind(&org)
        .execute(&mut *tx)
        .await
        .map_err(retry)?;
    commit_held(tx, &ctx, Verdict::Complete).await?;
    tracing::info!(%org, ?closed, "organization offboarded");
    Ok(())
}
