//! The queue's guarantees (DESIGN.md §3), one named test each.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::worker::spawn_worker;
use crate::support::{DEADLINE, TestDb, fresh_db, wait_for};
use jobs::maintenance::{LeaseReaper, PeriodicJob, Retention, Scheduler};
use jobs::{JobError, KindOptions, Kinds, NewJob, QueueConfig, RetryPolicy, admin, enqueue};
use serde_json::json;
use sqlx::Row;

async fn add(db: &TestDb, job: NewJob) -> i64 {
    db.add(job).await
}

async fn wait_state(db: &TestDb, id: i64, state: &str) {
    db.wait_state(id, state).await;
}

async fn job_state(pool: &sqlx::PgPool, id: i64) -> String {
    sqlx::query_scalar("select state::text from onboard.job where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn kinds(kind: &str, options: KindOptions) -> Kinds {
    Kinds::default().with(kind, options)
}

#[tokio::test]
async fn rollback_leaves_no_job() {
    let db = fresh_db().await;
    let mut tx = db.pool.begin().await.unwrap();
    enqueue(&mut tx, &NewJob::new("noop", json!({})))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let count: i64 = sqlx::query_scalar("select count(*) from onboard.job")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn duplicate_unique_key_returns_the_first_id_and_the_transaction_still_commits() {
    let db = fresh_db().await;
    let first = add(&db, NewJob::new("noop", json!({"n": 1})).unique_key("k1")).await;
    let mut tx = db.pool.begin().await.unwrap();
    let again = enqueue(
        &mut tx,
        &NewJob::new("noop", json!({"n": 2})).unique_key("k1"),
    )
    .await
    .unwrap();
    assert_eq!((again.id, again.duplicate), (first, true));
    // The transaction is still usable: another enqueue and the commit succeed.
    let other = enqueue(&mut tx, &NewJob::new("noop", json!({})).unique_key("k2"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(!other.duplicate);
    let count: i64 = sqlx::query_scalar("select count(*) from onboard.job")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 2);
}

#[tokio::test]
async fn unique_key_is_free_again_once_the_job_completes_unless_the_kind_widens_it() {
    let db = fresh_db().await;
    let first = add(&db, NewJob::new("noop", json!({})).unique_key("reuse")).await;
    let mut widened = NewJob::new("noop", json!({})).unique_key("kept");
    widened.unique_completed = true;
    let kept = add(&db, widened.clone()).await;
    let worker = spawn_worker(db.pool.clone(), QueueConfig::new("default"), |_, _| async {
        Ok(())
    });
    wait_state(&db, first, "completed").await;
    wait_state(&db, kept, "completed").await;
    worker.shutdown().await;

    let mut conn = db.pool.acquire().await.unwrap();
    let second = enqueue(
        &mut conn,
        &NewJob::new("noop", json!({})).unique_key("reuse"),
    )
    .await
    .unwrap();
    assert!(!second.duplicate);
    assert_ne!(second.id, first);
    let again = enqueue(&mut conn, &widened).await.unwrap();
    assert_eq!((again.id, again.duplicate), (kept, true));
}

#[tokio::test]
async fn failing_job_is_retryable_inside_its_backoff_window_and_discarded_after_max_attempts() {
    let db = fresh_db().await;
    let slow = KindOptions {
        retry: RetryPolicy {
            base: Duration::from_secs(60),
            cap: Duration::from_secs(600),
            jitter: 0.1,
        },
        ..Default::default()
    };
    let fast = KindOptions {
        retry: RetryPolicy {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(40),
            jitter: 0.1,
        },
        ..Default::default()
    };
    let config =
        QueueConfig::new("default").kinds(kinds("fails_slowly", slow).with("fails_fast", fast));
    let slow_id = add(&db, NewJob::new("fails_slowly", json!({}))).await;
    let fast_id = add(&db, NewJob::new("fails_fast", json!({})).max_attempts(3)).await;
    let worker = spawn_worker(db.pool.clone(), config, |_, _| async {
        Err(JobError::retry("boom"))
    });
    wait_state(&db, slow_id, "retryable").await;
    wait_state(&db, fast_id, "discarded").await;
    worker.shutdown().await;

    // run_at is the failure time plus 60 s ± 10 %.
    let row = sqlx::query(
        "select extract(epoch from run_at - (errors[1]->>'at')::timestamptz)::float8 as wait, attempt
           from onboard.job where id = $1",
    )
    .bind(slow_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let wait: f64 = row.get("wait");
    assert!(
        (53.9..=66.1).contains(&wait),
        "backoff {wait}s outside 60 s ± 10 %"
    );
    assert_eq!(row.get::<i32, _>("attempt"), 1);

    let row = sqlx::query("select attempt, cardinality(errors) as n, errors[3]->>'message' as last from onboard.job where id = $1")
        .bind(fast_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(row.get::<i32, _>("attempt"), 3);
    assert_eq!(row.get::<i32, _>("n"), 3, "every attempt's error is kept");
    assert_eq!(row.get::<String, _>("last"), "boom");
}

#[tokio::test]
async fn panicking_handler_is_a_failed_attempt() {
    let db = fresh_db().await;
    let id = add(&db, NewJob::new("panics", json!({})).max_attempts(1)).await;
    let retried = add(&db, NewJob::new("panics", json!({})).max_attempts(5)).await;
    let worker = spawn_worker(
        db.pool.clone(),
        QueueConfig::new("default").kinds(kinds(
            "panics",
            KindOptions {
                retry: RetryPolicy {
                    base: Duration::from_secs(3600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )),
        |_, _| async { panic!("handler exploded") },
    );
    wait_state(&db, id, "discarded").await;
    wait_state(&db, retried, "retryable").await;
    worker.shutdown().await;
    let (kind, message): (String, String) = sqlx::query_as(
        "select errors[1]->>'kind', errors[1]->>'message' from onboard.job where id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(kind, "panic");
    assert!(message.contains("handler exploded"), "{message}");
}

#[tokio::test]
async fn permanent_error_discards_at_once_and_snooze_does_not_use_an_attempt() {
    let db = fresh_db().await;
    let permanent = add(&db, NewJob::new("permanent", json!({})).max_attempts(10)).await;
    let snoozed = add(&db, NewJob::new("snooze", json!({})).max_attempts(1)).await;
    let later = add(&db, NewJob::new("retry_after", json!({}))).await;
    let worker = spawn_worker(
        db.pool.clone(),
        QueueConfig::new("default"),
        |job, ctx| async move {
            match job.kind.as_str() {
                "permanent" => Err(JobError::permanent("bad input")),
                "snooze" if ctx.attempt == 1 => Err(JobError::Snooze(Duration::from_millis(50))),
                "retry_after" => Err(JobError::RetryAfter(
                    Duration::from_secs(3600),
                    "429".into(),
                )),
                _ => Ok(()),
            }
        },
    );
    wait_state(&db, permanent, "discarded").await;
    wait_state(&db, snoozed, "completed").await;
    wait_state(&db, later, "retryable").await;
    worker.shutdown().await;
    let attempt: i32 = sqlx::query_scalar("select attempt from onboard.job where id = $1")
        .bind(permanent)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(attempt, 1);
    // max_attempts was 1, yet the snoozed job ran a second time and completed.
    let (attempt, max): (i32, i32) =
        sqlx::query_as("select attempt, max_attempts from onboard.job where id = $1")
            .bind(snoozed)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((attempt, max), (2, 2));
    let wait: f64 = sqlx::query_scalar(
        "select extract(epoch from run_at - (errors[1]->>'at')::timestamptz)::float8 from onboard.job where id = $1",
    )
    .bind(later)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        (3590.0..=3610.0).contains(&wait),
        "Retry-After honoured: {wait}"
    );
}

#[tokio::test]
async fn handler_that_completes_its_job_in_its_own_transaction_makes_the_ack_a_no_op() {
    let db = fresh_db().await;
    sqlx::query("create table side_effect (job_id bigint primary key)")
        .execute(&db.pool)
        .await
        .unwrap();
    let id = add(&db, NewJob::new("in_tx", json!({}))).await;
    let pool = db.pool.clone();
    let worker = spawn_worker(
        db.pool.clone(),
        QueueConfig::new("default"),
        move |_, ctx| {
            let pool = pool.clone();
            async move {
                let mut tx = pool.begin().await.map_err(JobError::retry)?;
                sqlx::query("insert into side_effect values ($1)")
                    .bind(ctx.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(JobError::retry)?;
                assert!(
                    jobs::complete(&mut tx, ctx.id, ctx.attempt)
                        .await
                        .map_err(JobError::retry)?
                );
                tx.commit().await.map_err(JobError::retry)?;
                Ok(())
            }
        },
    );
    wait_state(&db, id, "completed").await;
    worker.shutdown().await;
    let mut conn = db.pool.acquire().await.unwrap();
    // A second completion of the same attempt is fenced: nothing changes.
    assert!(!jobs::complete(&mut conn, id, 1).await.unwrap());
    let errors: i32 =
        sqlx::query_scalar("select cardinality(errors) from onboard.job where id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(errors, 0);
}

/// The next notification on `listener`, within [`DEADLINE`].
async fn next_notification(listener: &mut sqlx::postgres::PgListener) -> String {
    tokio::time::timeout(DEADLINE, listener.recv())
        .await
        .expect("a notification in time")
        .expect("the listener's connection")
        .payload()
        .to_owned()
}

/// A marker notification in a transaction of its own: notifications arrive in commit order, so
/// a listener that receives the marker next received nothing committed before it.
async fn marker(pool: &sqlx::PgPool, payload: &str) {
    sqlx::query("select pg_notify('onboard_job', $1)")
        .bind(payload)
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn enqueues_wake_each_queue_once_at_commit_and_a_rollback_wakes_nothing() {
    use sqlx::Connection;
    let db = fresh_db().await;
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("onboard_job").await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();

    enqueue(&mut conn, &NewJob::new("one", json!({})).queue("single"))
        .await
        .unwrap();
    assert_eq!(next_notification(&mut listener).await, "single");

    let mut tx = conn.begin().await.unwrap();
    enqueue(
        &mut tx,
        &NewJob::new("gone", json!({})).queue("rolled-back"),
    )
    .await
    .unwrap();
    jobs::enqueue_many(
        &mut tx,
        &[NewJob::new("gone", json!({})).queue("rolled-back")],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    marker(&db.pool, "marker-1").await;
    assert_eq!(next_notification(&mut listener).await, "marker-1");

    let many = ["a", "b", "a", "a"].map(|q| NewJob::new("many", json!({})).queue(q));
    jobs::enqueue_many(&mut conn, &many).await.unwrap();
    let mut woken = [
        next_notification(&mut listener).await,
        next_notification(&mut listener).await,
    ];
    woken.sort();
    assert_eq!(woken, ["a", "b"]);
    marker(&db.pool, "marker-2").await;
    assert_eq!(next_notification(&mut listener).await, "marker-2");
}

#[tokio::test]
async fn scheduled_job_without_notify_is_picked_up_by_the_timer() {
    let db = fresh_db().await;
    // A raw insert: no NOTIFY (only our enqueue statements send one).
    let id: i64 = sqlx::query_scalar(
        "insert into onboard.job (kind, state, run_at)
         values ('later', 'scheduled', now() + interval '1500 milliseconds') returning id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(job_state(&db.pool, id).await, "scheduled");
    // The fallback poll is an hour away: only the run_at timer can start the job.
    let mut config = QueueConfig::new("default");
    config.poll_interval = Duration::from_secs(3600);
    let worker = spawn_worker(db.pool.clone(), config, |_, _| async { Ok(()) });
    wait_state(&db, id, "completed").await;
    worker.shutdown().await;
    let late: bool =
        sqlx::query_scalar("select attempted_at >= run_at from onboard.job where id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(late, "never started before its run_at");
}

#[tokio::test]
async fn per_queue_cap_of_two_is_never_exceeded_across_two_workers() {
    let db = fresh_db().await;
    admin::set_limits(&db.pool, "capped", Some(2), None)
        .await
        .unwrap();
    let jobs: Vec<NewJob> = (0..30)
        .map(|n| NewJob::new("work", json!({"n": n})).queue("capped"))
        .collect();
    let mut conn = db.pool.acquire().await.unwrap();
    let ids = jobs::enqueue_many(&mut conn, &jobs).await.unwrap();
    drop(conn);
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (running, peak) = (running.clone(), peak.clone());
        move |_, _| {
            let (running, peak) = (running.clone(), peak.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Simulated work, so that attempts overlap if the cap lets them.
                tokio::time::sleep(Duration::from_millis(15)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        }
    };
    let second = fresh_pool(&db).await;
    let a = spawn_worker(db.pool.clone(), QueueConfig::new("capped"), handler.clone());
    let b = spawn_worker(second, QueueConfig::new("capped"), handler);
    for id in ids {
        wait_state(&db, id, "completed").await;
    }
    a.shutdown().await;
    b.shutdown().await;
    let peak = peak.load(Ordering::SeqCst);
    assert!((1..=2).contains(&peak), "peak concurrency {peak}");
}

async fn fresh_pool(db: &TestDb) -> sqlx::PgPool {
    db.new_pool().await
}

/// Holds the queue's settings row (`for share`) until the returned transaction ends, and
/// waits until a fetcher of that queue is blocked on it: the proof that a fetch is under way
/// and that the fetch before it has finished.
async fn catch_a_fetch(db: &TestDb, queue: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("select 1 from onboard.queue where name = $1 for share")
        .bind(queue)
        .execute(&mut *holder)
        .await
        .unwrap();
    wait_for("a fetch of the paused queue", DEADLINE, || async {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
              where datname = current_database() and wait_event_type = 'Lock'
                and query like '%from onboard.queue%for update%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (waiting > 0).then_some(())
    })
    .await;
    holder
}

#[tokio::test]
async fn paused_queue_is_not_fetched_until_resumed() {
    let db = fresh_db().await;
    admin::pause(&db.pool, "default").await.unwrap();
    let id = add(&db, NewJob::new("noop", json!({}))).await;
    let worker = spawn_worker(db.pool.clone(), QueueConfig::new("default"), |_, _| async {
        Ok(())
    });
    // Two fetches caught in turn: the first one finished, having seen the pause, before the
    // second could start.
    catch_a_fetch(&db, "default").await.commit().await.unwrap();
    let holder = catch_a_fetch(&db, "default").await;
    let (state, attempt): (String, i32) =
        sqlx::query_as("select state::text, attempt from onboard.job where id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempt), ("available", 0));
    holder.commit().await.unwrap();
    admin::resume(&db.pool, "default").await.unwrap();
    wait_state(&db, id, "completed").await;
    worker.shutdown().await;
}

#[tokio::test]
async fn per_second_rate_cap_holds_across_two_workers() {
    let db = fresh_db().await;
    const CAP: i64 = 4;
    admin::set_limits(&db.pool, "rated", None, Some(CAP as f64))
        .await
        .unwrap();
    sqlx::query("create table start_log (job_id bigint not null, worker text not null)")
        .execute(&db.pool)
        .await
        .unwrap();
    let jobs: Vec<NewJob> = (0..16)
        .map(|n| NewJob::new("work", json!({ "n": n })).queue("rated"))
        .collect();
    let mut conn = db.pool.acquire().await.unwrap();
    let ids = jobs::enqueue_many(&mut conn, &jobs).await.unwrap();
    drop(conn);
    let log = db.pool.clone();
    let handler = move |_, ctx: jobs::JobContext| {
        let log = log.clone();
        async move {
            sqlx::query("insert into start_log values ($1, $2)")
                .bind(ctx.id)
                .bind(&ctx.worker)
                .execute(&log)
                .await
                .map_err(JobError::retry)?;
            Ok(())
        }
    };
    let a = spawn_worker(db.pool.clone(), QueueConfig::new("rated"), handler.clone());
    let b = spawn_worker(fresh_pool(&db).await, QueueConfig::new("rated"), handler);
    for id in ids {
        wait_state(&db, id, "completed").await;
    }
    a.shutdown().await;
    b.shutdown().await;
    // Every start is recorded by the database (`attempted_at`): count them per second.
    let per_calendar_second: i64 = db
        .count(
            "select coalesce(max(n), 0) from (
                 select count(*) as n from onboard.job where queue = 'rated'
                  group by date_trunc('second', attempted_at)) s",
        )
        .await;
    let per_rolling_second: i64 = db
        .count(
            "select coalesce(max(n), 0) from (
                 select (select count(*) from onboard.job b
                          where b.queue = 'rated' and b.attempted_at >= a.attempted_at
                            and b.attempted_at < a.attempted_at + interval '1 second') as n
                   from onboard.job a where a.queue = 'rated') s",
        )
        .await;
    assert!(
        per_calendar_second <= CAP && per_rolling_second <= CAP,
        "starts in one second: {per_calendar_second} (calendar), {per_rolling_second} (rolling); cap {CAP}"
    );
    let (starts, workers): (i64, i64) =
        sqlx::query_as("select count(*), count(distinct worker) from start_log")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (starts, workers),
        (16, 2),
        "each job started once, by both workers"
    );
}

#[tokio::test]
async fn cancel_stops_a_running_job_and_removes_a_waiting_one() {
    let db = fresh_db().await;
    let running = add(&db, NewJob::new("blocks", json!({}))).await;
    let waiting = add(
        &db,
        NewJob::new("later", json!({})).run_at(chrono::Utc::now() + chrono::Duration::hours(1)),
    )
    .await;
    let worker = spawn_worker(db.pool.clone(), QueueConfig::new("default"), |_, _| async {
        std::future::pending::<()>().await;
        Ok(())
    });
    wait_state(&db, running, "running").await;
    assert_eq!(
        admin::cancel(&db.pool, running).await.unwrap(),
        jobs::JobState::Running
    );
    assert_eq!(
        admin::cancel(&db.pool, waiting).await.unwrap(),
        jobs::JobState::Cancelled
    );
    wait_state(&db, running, "cancelled").await;
    worker.shutdown().await;
    assert!(matches!(
        admin::discard(&db.pool, waiting).await,
        Err(admin::AdminError::WrongState { .. })
    ));
    admin::retry_now(&db.pool, waiting).await.unwrap();
    assert_eq!(job_state(&db.pool, waiting).await, "available");
}

#[tokio::test]
async fn worker_recovers_after_its_database_connections_are_killed() {
    let db = fresh_db().await;
    let first = add(&db, NewJob::new("noop", json!({}))).await;
    let worker = spawn_worker(db.pool.clone(), QueueConfig::new("default"), |_, _| async {
        Ok(())
    });
    wait_state(&db, first, "completed").await;
    let admin_pool = fresh_pool(&db).await;
    sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()")
        .execute(&admin_pool)
        .await
        .unwrap();
    let mut conn = admin_pool.acquire().await.unwrap();
    let second = enqueue(&mut conn, &NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .id;
    drop(conn);
    wait_state(&db, second, "completed").await;
    worker.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_hands_back_claimed_jobs_it_never_started() {
    let db = fresh_db().await;
    let jobs: Vec<NewJob> = (0..50)
        .map(|n| NewJob::new("slow", json!({"n": n})))
        .collect();
    let mut conn = db.pool.acquire().await.unwrap();
    jobs::enqueue_many(&mut conn, &jobs).await.unwrap();
    drop(conn);
    let started = Arc::new(AtomicUsize::new(0));
    let mut config = QueueConfig::new("default");
    config.batch_size = 50;
    config.max_in_flight = 50;
    let counter = started.clone();
    // A concurrency of 1 in apalis leaves most claimed jobs waiting in the backend's buffer.
    let worker = {
        use apalis::layers::WorkerBuilderExt;
        use apalis_core::monitor::Monitor;
        use apalis_core::worker::builder::WorkerBuilder;
        let pool = db.pool.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let monitor = Monitor::new().register(move |_| {
            let counter = counter.clone();
            WorkerBuilder::new("slow")
                .backend(jobs::PgBackend::<jobs::AnyJob>::new(
                    pool.clone(),
                    config.clone(),
                ))
                .concurrency(1)
                .build(move |_job: jobs::AnyJob| {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<(), JobError>(())
                    }
                })
        });
        let handle = tokio::spawn(monitor.run_with_signal(async move {
            let _ = stopped.await;
            Ok(())
        }));
        (stop, handle)
    };
    wait_for("first job to start", DEADLINE, || async {
        (started.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    let _ = worker.0.send(());
    let _ = tokio::time::timeout(DEADLINE, worker.1).await;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("select state::text, count(*) from onboard.job group by 1 order by 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(
        rows.iter()
            .all(|(state, _)| state == "available" || state == "completed"),
        "{rows:?}"
    );
    let available: i64 = sqlx::query_scalar(
        "select count(*) from onboard.job where state = 'available' and attempt = 0",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        available > 0,
        "unstarted jobs are available again, their claim undone"
    );
}

#[tokio::test]
async fn retention_deletes_only_finished_jobs_past_their_age() {
    let db = fresh_db().await;
    sqlx::query(
        "insert into onboard.job (kind, state, finalized_at, run_at) values
           ('old_completed', 'completed', now() - interval '25 hours', now()),
           ('new_completed', 'completed', now() - interval '23 hours', now()),
           ('old_discarded', 'discarded', now() - interval '8 days', now()),
           ('new_discarded', 'discarded', now() - interval '6 days', now()),
           ('old_cancelled', 'cancelled', now() - interval '25 hours', now()),
           ('waiting',       'retryable', null, now() - interval '30 days'),
           ('scheduled',     'scheduled', null, now() + interval '30 days')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let deleted = Retention::default().run_once(&mut conn).await.unwrap();
    assert_eq!(deleted, 3);
    let left: Vec<String> = sqlx::query_scalar("select kind from onboard.job order by kind")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        left,
        ["new_completed", "new_discarded", "scheduled", "waiting"]
    );
}

#[tokio::test]
async fn periodic_job_is_enqueued_once_per_tick_across_replicas() {
    let db = fresh_db().await;
    let scheduler = Scheduler {
        jobs: vec![PeriodicJob {
            name: "sweep".into(),
            every: Duration::from_secs(3600),
            job: NewJob::new("sweep", json!({})),
        }],
    };
    let replicas: Vec<_> = (0..4)
        .map(|_| {
            let (pool, scheduler) = (db.pool.clone(), scheduler.clone());
            tokio::spawn(async move {
                let mut tx = pool.begin().await.unwrap();
                let n = scheduler.run_once(&mut tx).await.unwrap();
                tx.commit().await.unwrap();
                n
            })
        })
        .collect();
    let mut total = 0;
    for replica in replicas {
        total += replica.await.unwrap();
    }
    assert_eq!(total, 1);
    let count: i64 = sqlx::query_scalar("select count(*) from onboard.job where kind = 'sweep'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn lease_reaper_rescues_only_expired_running_jobs() {
    let db = fresh_db().await;
    sqlx::query(
        "insert into onboard.job (kind, state, attempt, max_attempts, lease_owner, lease_expires_at) values
           ('expired', 'running', 1, 5, 'gone', now() - interval '1 second'),
           ('last_try', 'running', 5, 5, 'gone', now() - interval '1 second'),
           ('alive', 'running', 1, 5, 'here', now() + interval '1 minute')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    assert_eq!(LeaseReaper::default().run_once(&mut conn).await.unwrap(), 2);
    let states: Vec<(String, String)> =
        sqlx::query_as("select kind, state::text from onboard.job order by kind")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        states,
        [
            ("alive".into(), "running".into()),
            ("expired".into(), "retryable".into()),
            ("last_try".into(), "discarded".into())
        ]
    );
}
