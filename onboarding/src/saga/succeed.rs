//! A step attempt's success in one statement: the step `done` with its output and the attempt
//! counted, what follows it (the next step's job, or the saga's end and its metadata job), and
//! the fenced completion of the attempt's own job. The same writes as [`super::step_succeeded`],
//! [`super::enqueue_step`] or [`super::finish`] and `jobs::complete`, one round trip instead of
//! four to seven.

use serde_json::Value;
use sqlx::PgConnection;

use super::{Saga, is_local, step_job, sync_job, write_step};
use crate::start::STEPS;
use jobs::{NewJob, enqueue};

/// The attempt of a job that is running a saga step (its fence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The job's id.
    pub job_id: i64,
    /// The attempt that runs it.
    pub attempt: i32,
}

/// What [`step_attempt_succeeded`] left to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepSucceeded {
    /// Recorded with what follows and the attempt's job completed; `held` is false when the
    /// attempt no longer holds its job (nothing was completed: the caller rolls back).
    Settled {
        /// The attempt still held its job.
        held: bool,
    },
    /// Recorded; the next step touches only our database: the caller runs it or enqueues its
    /// job, and settles the attempt's job itself.
    Local(&'static str),
}

/// Several steps `done`, each attempt counted: $1 saga, $2 their names, $3 their outputs.
const DONE_MANY: &str = "
    update onboard.onboarding_step s
       set state = 'done', attempts = s.attempts + 1, output = d.output, updated_at = now()
      from unnest($2::text[], $3::jsonb[]) as d(name, output)
     where s.onboarding_id = $1 and s.name = d.name";

/// Step done, next step's job ($4–$11: `jobs::enqueue`'s insert), own job completed ($12 job,
/// $13 attempt: `jobs::complete`'s update).
fn done_next_sql() -> String {
    format!(
        "with step as ({DONE_MANY}), next_job as ({insert}), own as ({complete})
         select exists (select 1 from next_job), exists (select 1 from own)",
        insert = jobs::enqueue::insert_sql(4),
        complete = jobs::enqueue::complete_sql(12),
    )
}

/// Step done, saga `completed` (its organization `active` unless deleted; $14 its Clerk id),
/// the metadata job, own job completed: [`super::finish`]'s writes. Parameters as
/// [`done_next_sql`]'s.
fn done_finish_sql() -> String {
    format!(
        "with step as ({DONE_MANY}),
              saga as (update onboard.onboarding set state = 'completed', updated_at = now() where id = $1),
              org as (update onboard.organization set onboarding_status = 'active', updated_at = now()
                       where clerk_org_id = $14 and onboarding_status <> 'deleted'),
              next_job as ({insert}), own as ({complete})
         select exists (select 1 from next_job), exists (select 1 from own)",
        insert = jobs::enqueue::insert_sql(4),
        complete = jobs::enqueue::complete_sql(12),
    )
}

static DONE_NEXT: std::sync::LazyLock<String> = std::sync::LazyLock::new(done_next_sql);
static DONE_FINISH: std::sync::LazyLock<String> = std::sync::LazyLock::new(done_finish_sql);

/// A step's attempt succeeded: records it `done` with its output (the attempt counted), then
/// enqueues the next step's job, or ends the saga `completed` after the last step, and
/// completes `own`'s job fenced by its attempt — in one statement. When the next step touches
/// only our database, only the step is recorded ([`StepSucceeded::Local`]).
pub async fn step_attempt_succeeded(
    conn: &mut PgConnection,
    saga: &Saga,
    step: &str,
    output: &Value,
    own: Attempt,
) -> Result<StepSucceeded, sqlx::Error> {
    if let Some(next) = next_step(step).filter(|n| is_local(n)) {
        write_step(conn, saga.id, step, "done", None, Some(output), 1).await?;
        return Ok(StepSucceeded::Local(next));
    }
    let held = steps_succeeded(conn, saga, &[(step, output)], own).await?;
    Ok(StepSucceeded::Settled { held })
}

/// The step after `step`, if any.
pub fn next_step(step: &str) -> Option<&'static str> {
    let position = STEPS.iter().position(|s| *s == step).unwrap_or(STEPS.len());
    STEPS.get(position + 1).copied()
}

/// Consecutive steps' attempts that succeeded in one transaction (the local steps the worker
/// runs together), the last of them followed by a step that calls a provider or by the saga's
/// end: records each `done` with its output and its attempt counted, then what follows the
/// last, and completes `own`'s job, in one statement — [`step_attempt_succeeded`] for each.
/// Returns whether `own` still held its job (false: nothing was completed, roll back).
pub async fn steps_succeeded(
    conn: &mut PgConnection,
    saga: &Saga,
    done: &[(&str, &Value)],
    own: Attempt,
) -> Result<bool, sqlx::Error> {
    let Some((last, _)) = done.last() else {
        return jobs::complete(conn, own.job_id, own.attempt).await;
    };
    let (sql, job): (&'static str, NewJob) = match next_step(last) {
        Some(next) => (DONE_NEXT.as_str(), step_job(saga, next)),
        None => (DONE_FINISH.as_str(), sync_job(saga.id, "completed")),
    };
    let names: Vec<&str> = done.iter().map(|(name, _)| *name).collect();
    let outputs: Vec<sqlx::types::Json<&Value>> = done
        .iter()
        .map(|(_, output)| sqlx::types::Json(*output))
        .collect();
    let query = sqlx::query_as(sql)
        .bind(saga.id)
        .bind(&names)
        .bind(&outputs);
    let (inserted, held): (bool, bool) = jobs::bind_new_job!(query, &job)
        .bind(own.job_id)
        .bind(own.attempt)
        .bind(&saga.clerk_org_id)
        .fetch_one(&mut *conn)
        .await?;
    if held && !inserted {
        // A live job held the key: `enqueue` finds it (or inserts once it has finished).
        enqueue(conn, &job).await?;
    }
    Ok(held)
}

/// Whether the attempt holds its job (`jobs::enqueue::holds_sql`: $1 job, $2 attempt) and the
/// step's output ($3 saga, $4 step).
static ATTEMPT_HOLDS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "select {}, (select output from onboard.onboarding_step where onboarding_id = $3 and name = $4)",
        jobs::enqueue::holds_sql(1)
    )
});

/// Under the saga's lock: whether `own` still holds its job, and, when it does, the step's
/// stored output (`{}` when none), in one statement.
pub async fn attempt_holds(
    conn: &mut PgConnection,
    saga_id: i64,
    step: &str,
    own: Attempt,
) -> Result<Option<Value>, sqlx::Error> {
    let (held, output): (bool, Option<sqlx::types::Json<Value>>) =
        sqlx::query_as(ATTEMPT_HOLDS.as_str())
            .bind(own.job_id)
            .bind(own.attempt)
            .bind(saga_id)
            .bind(step)
            .fetch_one(conn)
            .await?;
    Ok(held.then(|| output.map_or(serde_json::json!({}), |o| o.0)))
}
