//! The fetch loop: claims runnable rows in batches and hands them to the apalis worker.

use std::sync::Arc;
use std::time::Duration;

use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use sqlx::Row;
use sqlx::postgres::PgRow;
use tokio::sync::{mpsc, oneshot};

use super::Shared;
use super::ack::{AckMessage, Outcome, Verdict};
use crate::job::{Cancellation, JobArgs, JobContext};

/// One statement for queues without caps: makes due waiting rows `available` (a range scan
/// of `job_waiting_idx` bounded by `run_at`), claims up to `$4` `available` rows in fetch
/// order (`job_available_idx`) unless the queue is paused or capped, and reports the seconds
/// until the next waiting `run_at` (0 when rows were just made available: they are claimed by
/// the next fetch). A backlog of future jobs is never walked. The outer updates need no state
/// guard: their rows are locked by the inner select, which re-checked its conditions on each
/// row's latest version (and a guard there would steer the planner onto a partial index).
pub const FETCH: &str = "
with restricted as (
    select exists (select 1 from onboard.queue
                    where name = $1 and (paused or max_running is not null or max_per_second is not null)) as yes
),
staged as (
    update onboard.job set state = 'available'
     where id = any(array(
             select id from onboard.job
              where queue = $1 and state in ('scheduled', 'retryable') and run_at <= now()
              order by run_at, id
              limit $4
              for update skip locked))
    returning id
),
picked as (
    update onboard.job
       set state = 'running', attempt = attempt + 1, attempted_at = now(),
           lease_owner = $2, lease_expires_at = now() + $3 * interval '1 millisecond'
     where id = any(array(
             select id from onboard.job
              where queue = $1 and state = 'available'
                and not (select yes from restricted)
              order by priority, run_at, id
              limit $4
              for update skip locked))
    returning id, kind, args, attempt, max_attempts
)
select id, kind, args, attempt, max_attempts, null::float8 as next_due, null::bool as restricted
  from picked
union all
select null, null, null, null, null,
       case when exists (select 1 from staged) then 0::float8
            else (select extract(epoch from min(run_at) - now())::float8 from onboard.job
                   where queue = $1 and state in ('scheduled', 'retryable') and run_at > now()) end,
       (select yes from restricted)";

/// Makes up to `$2` due waiting rows of queue `$1` `available` (the capped path's first step).
const STAGE: &str = "
update onboard.job set state = 'available'
 where id = any(array(
         select id from onboard.job
          where queue = $1 and state in ('scheduled', 'retryable') and run_at <= now()
          order by run_at, id
          limit $2
          for update skip locked))";

/// The claim statement of the capped path, run after the queue row is locked; `$5` is the
/// start time the rate cap counted.
const CLAIM: &str = "
update onboard.job
   set state = 'running', attempt = attempt + 1, attempted_at = $5,
       lease_owner = $2, lease_expires_at = now() + $3 * interval '1 millisecond'
 where id = any(array(
         select id from onboard.job
          where queue = $1 and state = 'available'
          order by priority, run_at, id
          limit $4
          for update skip locked))
returning id, kind, args, attempt, max_attempts";

const NEXT_DUE: &str = "
select extract(epoch from min(run_at) - now())::float8 from onboard.job
 where queue = $1 and state in ('scheduled', 'retryable') and run_at > now()";

/// Locks the queue's settings row: serialises the capped fetchers of a queue.
const LOCK: &str = "select 1 from onboard.queue where name = $1 for update";

/// The queue's settings, read after [`LOCK`] (so the latest version). `at` is the clock read
/// under the lock and never before the last refill, so successive claims see increasing times.
const SETTINGS: &str = "
select q.paused, q.max_running, q.max_per_second, q.tokens, c.at,
       extract(epoch from c.at - q.tokens_at)::float8 as elapsed
  from onboard.queue q, lateral (select greatest(clock_timestamp(), q.tokens_at) as at) c
 where q.name = $1";

/// How long a capped queue waits before it looks again for room freed by other workers.
const CAP_RECHECK: Duration = Duration::from_millis(100);

struct Claimed {
    rows: Vec<PgRow>,
    /// Seconds until the next waiting job is due, if any.
    next_due: Option<f64>,
    /// The queue is paused or capped: use the capped path.
    restricted: bool,
}

pub(crate) async fn run_fetcher<Args: JobArgs>(
    shared: Arc<Shared>,
    tasks: mpsc::UnboundedSender<Task<Args>>,
    listening: futures::future::Shared<oneshot::Receiver<()>>,
) {
    // Fetch only once LISTEN is in place, so no notification falls in between.
    let _ = tokio::time::timeout(Duration::from_secs(5), listening).await;
    let batch = shared.config.batch_size.max(1);
    let mut restricted = false;
    // The last claim got all it asked for: more rows are probably waiting.
    let mut backlog = false;
    let mut failures = 0u32;
    loop {
        if shared.draining.is_cancelled() {
            return;
        }
        let first = tokio::select! {
            permit = shared.capacity.acquire() => permit,
            () = shared.draining.cancelled() => return,
        };
        let Ok(first) = first else { return };
        first.forget();
        let mut wanted = 1;
        if backlog {
            // Rows are waiting: gather a fuller batch (fewer, larger claims) for a moment.
            let more = gather(&shared, batch).await;
            wanted += more;
        }
        // Top up to a full batch with whatever is free now (another fetcher may take it first).
        let extra = shared.capacity.available_permits().min(batch - 1);
        if let Ok(permits) = shared
            .capacity
            .try_acquire_many(u32::try_from(extra).unwrap_or(0))
        {
            permits.forget();
            wanted += extra;
        }
        let claimed = if restricted {
            claim_capped(&shared, wanted).await
        } else {
            claim(&shared, wanted).await
        };
        let claimed = match claimed {
            Ok(claimed) => {
                failures = 0;
                claimed
            }
            Err(error) => {
                shared.capacity.add_permits(wanted);
                failures += 1;
                let delay = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                tracing::warn!(queue = %shared.config.queue, %error, ?delay, "fetch failed; retrying");
                wait(&shared, delay).await;
                continue;
            }
        };
        restricted = claimed.restricted;
        let got = claimed.rows.len();
        backlog = got == wanted && !restricted;
        shared.capacity.add_permits(wanted - got);
        for row in claimed.rows {
            if let Some(task) = to_task::<Args>(&shared, &row)
                && tasks.send(task).is_err()
            {
                return;
            }
        }
        if got == wanted {
            continue;
        }
        let mut delay = shared.config.poll_interval;
        if let Some(due) = claimed.next_due {
            delay = delay.min(Duration::from_secs_f64(due.max(0.0)));
        }
        if restricted {
            delay = delay.min(CAP_RECHECK);
        }
        wait(&shared, delay).await;
    }
}

/// How long a fetcher facing a backlog waits for more free slots before it claims.
const GATHER: Duration = Duration::from_millis(2);

/// Waits up to [`GATHER`] for half a batch of free slots (beyond the one already taken) and
/// takes them; returns how many it took (none when they did not free up in time).
async fn gather(shared: &Shared, batch: usize) -> usize {
    let half = (batch / 2).min(shared.config.max_in_flight / 2);
    let Some(more) = half.checked_sub(1).filter(|more| *more > 0) else {
        return 0;
    };
    let acquire = shared
        .capacity
        .acquire_many(u32::try_from(more).unwrap_or(u32::MAX));
    tokio::select! {
        permits = tokio::time::timeout(GATHER, acquire) => match permits {
            Ok(Ok(permits)) => {
                permits.forget();
                more
            }
            _ => 0,
        },
        () = shared.draining.cancelled() => 0,
    }
}

/// Sleeps until `delay` passes, a wake-up arrives, or the backend stops.
async fn wait(shared: &Shared, delay: Duration) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = shared.wake.notified() => {}
        () = shared.draining.cancelled() => {}
    }
}

async fn claim(shared: &Shared, limit: usize) -> Result<Claimed, sqlx::Error> {
    let rows = sqlx::query(FETCH)
        .bind(&shared.config.queue)
        .bind(&shared.owner)
        .bind(shared.lease_ms())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&shared.pool)
        .await?;
    let mut claimed = Claimed {
        rows: Vec::with_capacity(rows.len()),
        next_due: None,
        restricted: false,
    };
    for row in rows {
        if row.try_get::<Option<i64>, _>("id")?.is_some() {
            claimed.rows.push(row);
        } else {
            claimed.next_due = row.try_get("next_due")?;
            claimed.restricted = row
                .try_get::<Option<bool>, _>("restricted")?
                .unwrap_or(false);
        }
    }
    Ok(claimed)
}

/// The capped path: the queue row's lock serialises fetchers of this queue across all workers,
/// and each statement after it sees every claim committed before.
async fn claim_capped(shared: &Shared, wanted: usize) -> Result<Claimed, sqlx::Error> {
    let queue = &shared.config.queue;
    let mut tx = shared.pool.begin().await?;
    let locked = sqlx::query(LOCK)
        .bind(queue)
        .fetch_optional(&mut *tx)
        .await?;
    let settings = match locked {
        Some(_) => Some(
            sqlx::query(SETTINGS)
                .bind(queue)
                .fetch_one(&mut *tx)
                .await?,
        ),
        None => None,
    };
    let Some(settings) = settings else {
        tx.commit().await?;
        return claim(shared, wanted).await;
    };
    let paused: bool = settings.try_get("paused")?;
    let max_running: Option<i32> = settings.try_get("max_running")?;
    let per_second: Option<f64> = settings.try_get("max_per_second")?;
    let restricted = paused || max_running.is_some() || per_second.is_some();
    if !restricted {
        tx.commit().await?;
        return claim(shared, wanted).await;
    }
    if paused {
        tx.commit().await?;
        return Ok(Claimed {
            rows: Vec::new(),
            next_due: None,
            restricted,
        });
    }
    sqlx::query(STAGE)
        .bind(queue)
        .bind(i64::try_from(wanted).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
    let mut next_due: Option<f64> = sqlx::query_scalar(NEXT_DUE)
        .bind(queue)
        .fetch_one(&mut *tx)
        .await?;
    let at: chrono::DateTime<chrono::Utc> = settings.try_get("at")?;
    let mut allowed = wanted as f64;
    if let Some(max) = max_running {
        let running: i64 = sqlx::query_scalar(
            "select count(*) from onboard.job where queue = $1 and state = 'running'",
        )
        .bind(queue)
        .fetch_one(&mut *tx)
        .await?;
        allowed = allowed.min((i64::from(max) - running).max(0) as f64);
    }
    let mut tokens = 0.0;
    if let Some(rate) = per_second {
        let stored: f64 = settings.try_get("tokens")?;
        let elapsed: f64 = settings.try_get("elapsed")?;
        // A bucket of one: starts are at least 1/rate apart, so no second sees more than
        // `rate` of them.
        tokens = (stored + elapsed.max(0.0) * rate).min(1.0);
        allowed = allowed.min(tokens.floor());
        if tokens < 1.0 {
            let refill = (1.0 - tokens) / rate;
            next_due = Some(next_due.map_or(refill, |due| due.min(refill)));
        }
    }
    let limit = allowed.max(0.0) as i64;
    let rows = if limit > 0 {
        sqlx::query(CLAIM)
            .bind(queue)
            .bind(&shared.owner)
            .bind(shared.lease_ms())
            .bind(limit)
            .bind(at)
            .fetch_all(&mut *tx)
            .await?
    } else {
        Vec::new()
    };
    if per_second.is_some() {
        sqlx::query("update onboard.queue set tokens = $2, tokens_at = $3 where name = $1")
            .bind(queue)
            .bind(tokens - rows.len() as f64)
            .bind(at)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Claimed {
        rows,
        next_due,
        restricted,
    })
}

/// Turns a claimed row into an apalis task carrying its [`JobContext`]; an undecodable row is
/// discarded with the reason instead.
fn to_task<Args: JobArgs>(shared: &Shared, row: &PgRow) -> Option<Task<Args>> {
    let id: i64 = row.try_get("id").ok()?;
    let kind: String = row.try_get("kind").unwrap_or_default();
    let attempt: i32 = row.try_get("attempt").unwrap_or(1);
    let max_attempts: i32 = row.try_get("max_attempts").unwrap_or(1);
    let args: sqlx::types::Json<serde_json::Value> = row
        .try_get("args")
        .unwrap_or(sqlx::types::Json(serde_json::Value::Null));
    let cancellation = Cancellation::default();
    shared
        .in_flight
        .lock()
        .expect("in-flight lock")
        .insert(id, cancellation.clone());
    let ctx = JobContext {
        id,
        attempt,
        max_attempts,
        kind: kind.clone(),
        queue: shared.config.queue.clone(),
        worker: shared.owner.clone(),
        cancellation,
        settled: Default::default(),
    };
    match Args::decode(&kind, args.0) {
        Ok(args) => Some({
            shared
                .unstarted
                .lock()
                .expect("unstarted lock")
                .insert(id, attempt);
            TaskBuilder::new(args)
                .task_id(TaskId::from_int(u64::try_from(id).unwrap_or_default()))
                // apalis adds one on first poll: the handler's `Attempt` equals ours.
                .attempt(usize::try_from(attempt - 1).unwrap_or_default())
                .data(ctx)
                .build()
        }),
        Err(reason) => {
            tracing::error!(job = id, %kind, %reason, "discarding a job that cannot be decoded");
            let _ = shared.acks.send(AckMessage::Outcome(Outcome {
                ctx,
                verdict: Verdict::Discard {
                    message: reason,
                    error_kind: "undecodable",
                },
                elapsed: std::time::Duration::ZERO,
            }));
            None
        }
    }
}
