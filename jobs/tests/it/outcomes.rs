//! Outcomes from the outside world (error texts, `Retry-After`) cannot freeze a queue: what is
//! stored is sanitised and capped, and one outcome the database rejects does not hold back
//! the others.

use std::time::Duration;

use jobs::maintenance::LeaseReaper;
use jobs::{JobError, KindOptions, Kinds, NewJob, QueueConfig};
use serde_json::json;

use crate::support::worker::spawn_worker;
use crate::support::{TestDb, fresh_db, wait_for};

/// Long enough for a healthy acker on a loaded machine, far shorter than "for ever".
const SETTLE: Duration = Duration::from_secs(30);

async fn enqueue_with_bystanders(db: &TestDb, kind: &str, bystanders: usize) -> (i64, Vec<i64>) {
    let bad = db.add(NewJob::new(kind, json!({}))).await;
    let mut others = Vec::new();
    for n in 0..bystanders {
        others.push(db.add(NewJob::new("fine", json!({ "n": n }))).await);
    }
    (bad, others)
}

async fn wait_completed(db: &TestDb, ids: &[i64]) {
    for &id in ids {
        wait_for(&format!("bystander {id} to complete"), SETTLE, || async {
            (db.state(id).await == "completed").then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn an_error_text_with_a_nul_is_stored_without_it_and_does_not_block_other_outcomes() {
    let db = fresh_db().await;
    let (bad, others) = enqueue_with_bystanders(&db, "nul", 20).await;
    let long = "x".repeat(100_000);
    let worker = spawn_worker(
        db.pool.clone(),
        QueueConfig::new("default"),
        move |job, _| {
            let long = long.clone();
            async move {
                match job.kind.as_str() {
                    "nul" => Err(JobError::retry(format!("bad\u{0}byte {long}"))),
                    _ => Ok(()),
                }
            }
        },
    );
    wait_completed(&db, &others).await;
    wait_for("the failed attempt to be recorded", SETTLE, || async {
        (db.state(bad).await == "retryable").then_some(())
    })
    .await;
    worker.shutdown().await;
    let message: String =
        sqlx::query_scalar("select errors[1]->>'message' from onboard.job where id = $1")
            .bind(bad)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(message.starts_with("badbyte xxx"), "{}", &message[..20]);
    assert!(
        message.len() <= jobs::error::MAX_MESSAGE_BYTES,
        "error text bounded: {} bytes",
        message.len()
    );
}

#[tokio::test]
async fn an_absurd_retry_after_or_snooze_is_capped_and_does_not_block_other_outcomes() {
    let db = fresh_db().await;
    let (retry_after, mut others) = enqueue_with_bystanders(&db, "retry_after", 10).await;
    let (snooze, more) = enqueue_with_bystanders(&db, "snooze", 10).await;
    others.extend(more);
    let mut config = QueueConfig::new("default");
    config.max_delay = Duration::from_secs(3600);
    let worker = spawn_worker(db.pool.clone(), config, |job, _| async move {
        match job.kind.as_str() {
            "retry_after" => Err(JobError::RetryAfter(Duration::MAX, "429".into())),
            "snooze" => Err(JobError::Snooze(Duration::from_secs(u64::MAX / 2))),
            _ => Ok(()),
        }
    });
    wait_completed(&db, &others).await;
    wait_for("both to be waiting again", SETTLE, || async {
        (db.state(retry_after).await == "retryable" && db.state(snooze).await == "scheduled")
            .then_some(())
    })
    .await;
    worker.shutdown().await;
    for id in [retry_after, snooze] {
        let wait: f64 = sqlx::query_scalar(
            "select extract(epoch from run_at - attempted_at)::float8 from onboard.job where id = $1",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(
            (3590.0..=3700.0).contains(&wait),
            "job {id} waits {wait} s, not the configured maximum of 3600 s"
        );
    }
}

#[tokio::test]
async fn an_outcome_the_database_rejects_in_every_form_is_left_to_the_lease_reaper() {
    let db = fresh_db().await;
    // The database refuses to let the `poison` job leave `running` by any outcome.
    sqlx::raw_sql(
        "create function refuse_poison() returns trigger language plpgsql as $$
         begin
             if new.kind = 'poison' and old.state = 'running' and new.state <> 'running'
                and current_setting('test.allow_poison', true) is distinct from 'on' then
                 raise exception 'refused';
             end if;
             return new;
         end $$;
         create trigger refuse_poison before update on onboard.job
             for each row execute function refuse_poison();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (poison, others) = enqueue_with_bystanders(&db, "poison", 20).await;
    let mut config = QueueConfig::new("default");
    config.lease = Duration::from_secs(2);
    config.kinds = Kinds::new(KindOptions {
        timeout: Duration::from_secs(1),
        ..Default::default()
    });
    let worker = spawn_worker(db.pool.clone(), config, |job, _| async move {
        match job.kind.as_str() {
            "poison" => Err(JobError::retry("fails")),
            _ => Ok(()),
        }
    });
    wait_completed(&db, &others).await;
    // The worker gave up on the poison's outcome: it no longer extends its lease.
    wait_for("the poison's lease to lapse", SETTLE, || async {
        let lapsed: bool = sqlx::query_scalar(
            "select state = 'running' and lease_expires_at < now() from onboard.job where id = $1",
        )
        .bind(poison)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        lapsed.then_some(())
    })
    .await;
    worker.shutdown().await;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("select set_config('test.allow_poison', 'on', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(LeaseReaper::default().run_once(&mut tx).await.unwrap(), 1);
    tx.commit().await.unwrap();
    assert_eq!(db.state(poison).await, "retryable");
}

#[tokio::test]
async fn each_failed_attempt_records_how_long_it_ran() {
    let db = fresh_db().await;
    let id = db
        .add(NewJob::new("slow_failure", json!({})).max_attempts(2))
        .await;
    let fast = KindOptions {
        retry: jobs::RetryPolicy {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(40),
            jitter: 0.1,
        },
        ..Default::default()
    };
    let config = QueueConfig::new("default")
        .kinds(Kinds::new(KindOptions::default()).with("slow_failure", fast));
    let worker = spawn_worker(db.pool.clone(), config, |_, _| async {
        // The attempt's own work: the recorded duration cannot be shorter than this.
        tokio::time::sleep(Duration::from_millis(150)).await;
        Err::<(), _>(JobError::retry("still failing"))
    });
    wait_for("both attempts to fail", SETTLE, || async {
        (db.state(id).await == "discarded").then_some(())
    })
    .await;
    worker.shutdown().await;
    let entries: Vec<(i32, Option<i64>, Option<String>)> = sqlx::query_as(
        "select (e->>'attempt')::int, (e->>'duration_ms')::bigint, e->>'worker'
           from onboard.job, unnest(errors) e where id = $1",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    for (n, (attempt, duration_ms, worker)) in entries.into_iter().enumerate() {
        assert_eq!(attempt, i32::try_from(n).unwrap() + 1);
        assert!(duration_ms.is_some_and(|ms| ms >= 150), "{duration_ms:?}");
        assert!(worker.is_some_and(|w| !w.is_empty()));
    }
}

/// A handler that recorded its job's outcome in its own transaction says so with
/// `JobContext::settle`: the runtime frees the slot and writes nothing for that attempt. The
/// handler here settles without completing, so a write would show as the job completing; with
/// one job in flight, the next job's completion comes after any write for the first.
#[tokio::test]
async fn an_attempt_its_handler_settled_is_not_acknowledged_again() {
    let db = fresh_db().await;
    let settled = db.add(NewJob::new("settled", json!({}))).await;
    let next = db.add(NewJob::new("fine", json!({}))).await;
    let mut config = QueueConfig::new("default");
    config.max_in_flight = 1;
    config.batch_size = 1;
    let worker = spawn_worker(db.pool.clone(), config, |job, ctx| async move {
        if job.kind == "settled" {
            ctx.settle();
        }
        Ok(())
    });
    wait_completed(&db, &[next]).await;
    worker.shutdown().await;
    assert_eq!(
        db.state(settled).await,
        "running",
        "the runtime wrote an outcome for an attempt its handler had settled"
    );
}
