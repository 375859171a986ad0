//! Enqueue inside the caller's transaction: a job is invisible until the caller commits and
//! gone if it rolls back. Unique keys never abort the caller's transaction.

use sqlx::PgConnection;

use crate::NewJob;

/// The outcome of an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The new job's id, or the id of the live job already holding the unique key.
    pub id: i64,
    /// True when a job with the same unique key already existed (nothing was inserted).
    pub duplicate: bool,
}

/// [`enqueue`]'s insert, its eight parameters numbered from `$first` (kind, queue, args,
/// priority, run_at, max_attempts, unique_key, unique_completed), for a statement that enqueues
/// in one of its data-modifying CTEs. A taken unique key inserts nothing; `returning id`.
///
/// The insert wakes its queue's workers itself: its one row is drawn from
/// `pg_notify('onboard_job', queue)`, which PostgreSQL delivers at commit (and drops on
/// rollback). An insert that does not notify (a raw `insert`; the ingress's, which wakes
/// through [`crate::notify::Coalescer`]) is found by the workers' next poll.
pub fn insert_sql(first: usize) -> String {
    let [
        kind,
        queue,
        args,
        priority,
        run_at,
        max_attempts,
        unique_key,
        unique_completed,
    ] = std::array::from_fn(|n| format!("${}", first + n));
    format!(
        "insert into onboard.job (kind, queue, args, priority, run_at, max_attempts, unique_key, unique_completed, state)
select {kind}, {queue}, {args}, {priority}, coalesce({run_at}, now()), {max_attempts}, {unique_key}, {unique_completed},
       case when {run_at} > now() then 'scheduled' else 'available' end::onboard.job_state
  from pg_notify('onboard_job', {queue})
on conflict (unique_key) where unique_key is not null
    and (state in ('available', 'scheduled', 'running', 'retryable')
         or (unique_completed and state = 'completed'))
do nothing
returning id"
    )
}

/// Binds a [`NewJob`]'s fields to `query` (anything with `.bind`) in [`insert_sql`]'s parameter
/// order: `bind_new_job!(sqlx::query(sql).bind(a), &job)` when the insert's parameters follow `a`.
#[macro_export]
macro_rules! bind_new_job {
    ($query:expr, $job:expr) => {{
        let job: &$crate::NewJob = $job;
        $query
            .bind(&job.kind)
            .bind(&job.queue)
            .bind(::sqlx::types::Json(&job.args))
            .bind(job.priority)
            .bind(job.run_at)
            .bind(job.max_attempts)
            .bind(&job.unique_key)
            .bind(job.unique_completed)
    }};
}

static INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| insert_sql(1));

/// [`complete`]'s update, its two parameters (job id, attempt) numbered from `$first`, for a
/// statement that completes its job in one of its CTEs; `returning id` (no row: not held).
pub fn complete_sql(first: usize) -> String {
    let (id, attempt) = (first, first + 1);
    format!(
        "update onboard.job
    set state = 'completed', finalized_at = now(), lease_owner = null, lease_expires_at = null
  where id = ${id} and attempt = ${attempt} and state = 'running'
returning id"
    )
}

static COMPLETE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| complete_sql(1));

const FIND_UNIQUE: &str = "
select id from onboard.job
 where unique_key = $1
   and (state in ('available', 'scheduled', 'running', 'retryable')
        or (unique_completed and state = 'completed'))";

/// Enqueues one job on the caller's connection or transaction (`&mut *tx`).
///
/// A duplicate unique key returns the existing job's id and leaves the transaction usable.
pub async fn enqueue(conn: &mut PgConnection, job: &NewJob) -> Result<Enqueued, sqlx::Error> {
    loop {
        let inserted: Option<i64> = bind_new_job!(sqlx::query_scalar(INSERT.as_str()), job)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(id) = inserted {
            return Ok(Enqueued {
                id,
                duplicate: false,
            });
        }
        // ON CONFLICT waited for any concurrent holder of the key to commit; look it up.
        // If it finished in between, the key is free again: insert once more.
        let Some(key) = job.unique_key.as_deref() else {
            return Err(sqlx::Error::RowNotFound);
        };
        if let Some(id) = sqlx::query_scalar(FIND_UNIQUE)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?
        {
            return Ok(Enqueued {
                id,
                duplicate: true,
            });
        }
    }
}

const INSERT_MANY: &str = "
insert into onboard.job (kind, queue, args, priority, run_at, max_attempts, unique_key, unique_completed, state)
select kind, queue, args, priority, coalesce(run_at, now()), max_attempts, unique_key, unique_completed,
       case when run_at > now() then 'scheduled' else 'available' end::onboard.job_state
  from unnest($1::text[], $2::text[], $3::jsonb[], $4::smallint[], $5::timestamptz[], $6::int[],
              $7::text[], $8::bool[])
       as t(kind, queue, args, priority, run_at, max_attempts, unique_key, unique_completed)
 -- One NOTIFY per distinct queue, once per statement (an uncorrelated subquery: a one-time filter).
 where (select count(*) from (select distinct q from unnest($2::text[]) q) d, pg_notify('onboard_job', d.q)) >= 0
on conflict (unique_key) where unique_key is not null
    and (state in ('available', 'scheduled', 'running', 'retryable')
         or (unique_completed and state = 'completed'))
do nothing
returning id";

/// Enqueues many jobs in one statement (`UNNEST`); returns the ids inserted, in order.
/// Jobs whose unique key is already taken are skipped.
pub async fn enqueue_many(
    conn: &mut PgConnection,
    jobs: &[NewJob],
) -> Result<Vec<i64>, sqlx::Error> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let mut kinds = Vec::with_capacity(jobs.len());
    let mut queues = Vec::with_capacity(jobs.len());
    let mut args = Vec::with_capacity(jobs.len());
    let mut priorities = Vec::with_capacity(jobs.len());
    let mut run_ats = Vec::with_capacity(jobs.len());
    let mut max_attempts = Vec::with_capacity(jobs.len());
    let mut unique_keys = Vec::with_capacity(jobs.len());
    let mut unique_completed = Vec::with_capacity(jobs.len());
    for job in jobs {
        kinds.push(job.kind.as_str());
        queues.push(job.queue.as_str());
        args.push(sqlx::types::Json(&job.args));
        priorities.push(job.priority);
        run_ats.push(job.run_at);
        max_attempts.push(job.max_attempts);
        unique_keys.push(job.unique_key.as_deref());
        unique_completed.push(job.unique_completed);
    }
    sqlx::query_scalar(INSERT_MANY)
        .bind(kinds)
        .bind(queues)
        .bind(args)
        .bind(priorities)
        .bind(run_ats)
        .bind(max_attempts)
        .bind(unique_keys)
        .bind(unique_completed)
        .fetch_all(&mut *conn)
        .await
}

/// Completes a running job inside the caller's transaction, fenced by its attempt. Returns
/// false (and changes nothing) when the attempt no longer holds the job. The runtime's own
/// acknowledgement of that attempt is then a no-op.
pub async fn complete(conn: &mut PgConnection, id: i64, attempt: i32) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(COMPLETE.as_str())
        .bind(id)
        .bind(attempt)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// True while attempt `attempt` still holds running job `id`; the job's row then stays locked
/// for the rest of the caller's transaction, so no reaper or ack can take the job from this
/// attempt before it commits. Call it right before committing work done for the attempt.
pub async fn hold(conn: &mut PgConnection, id: i64, attempt: i32) -> Result<bool, sqlx::Error> {
    let held: Option<i64> = sqlx::query_scalar(
        "select id from onboard.job where id = $1 and attempt = $2 and state = 'running' for no key update",
    )
    .bind(id)
    .bind(attempt)
    .fetch_optional(conn)
    .await?;
    Ok(held.is_some())
}

/// Whether an attempt still holds its running job (no lock taken), as a boolean expression
/// whose two parameters (job id, attempt) are numbered from `$first`, for a statement that
/// reads other things in the same round trip.
pub fn holds_sql(first: usize) -> String {
    let (id, attempt) = (first, first + 1);
    format!(
        "exists (select 1 from onboard.job where id = ${id} and attempt = ${attempt} and state = 'running')"
    )
}

/// Discards a running job inside the caller's transaction, fenced by its attempt, recording
/// `message` as that attempt's error. Returns false when the attempt no longer holds the job.
pub async fn discard(
    conn: &mut PgConnection,
    id: i64,
    attempt: i32,
    message: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "update onboard.job
            set state = 'discarded', finalized_at = now(), lease_owner = null, lease_expires_at = null,
                errors = array_append(errors, jsonb_build_object(
                    'attempt', attempt, 'at', now(), 'worker', lease_owner, 'kind', 'permanent',
                    'duration_ms', (extract(epoch from clock_timestamp() - attempted_at) * 1000)::bigint,
                    'message', $3::text))
          where id = $1 and attempt = $2 and state = 'running'",
    )
    .bind(id)
    .bind(attempt)
    .bind(crate::error::storable(message))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
