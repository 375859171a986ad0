//! Maintenance never undoes an operator's decision: retention spares a job retried while it
//! deletes, and the lease reaper does not revive a job cancelled while its worker died.

use jobs::admin;
use jobs::maintenance::{LeaseReaper, Retention};

use crate::support::{DEADLINE, fresh_db, wait_for};

#[tokio::test]
async fn a_job_retried_while_retention_deletes_it_survives() {
    let db = fresh_db().await;
    let id: i64 = sqlx::query_scalar(
        "insert into onboard.job (kind, state, attempt, finalized_at)
         values ('old', 'discarded', 1, now() - interval '30 days') returning id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // The operator's retry is under way (the same update as `admin::retry_now`), not committed.
    let mut operator = db.pool.begin().await.unwrap();
    sqlx::query(
        "update onboard.job
            set state = 'available', run_at = now(), finalized_at = null, cancel_requested = false,
                max_attempts = greatest(max_attempts, attempt + 1)
          where id = $1",
    )
    .bind(id)
    .execute(&mut *operator)
    .await
    .unwrap();
    // Retention sees the old row in its snapshot and waits for the operator's row lock.
    let pool = db.pool.clone();
    let retention = tokio::spawn(async move {
        let mut conn = pool.acquire().await.unwrap();
        Retention::default().run_once(&mut conn).await.unwrap()
    });
    wait_for("retention to wait on the retried row", DEADLINE, || async {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
              where datname = current_database() and wait_event_type = 'Lock'
                and query like '%delete from onboard.job%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (waiting == 1).then_some(())
    })
    .await;
    operator.commit().await.unwrap();
    let deleted = tokio::time::timeout(DEADLINE, retention)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deleted, 0);
    assert_eq!(db.state(id).await, "available");
}

#[tokio::test]
async fn the_lease_reaper_finishes_a_job_cancelled_while_its_worker_was_gone() {
    let db = fresh_db().await;
    let id: i64 = sqlx::query_scalar(
        "insert into onboard.job (kind, state, attempt, max_attempts, lease_owner, lease_expires_at, attempted_at)
         values ('external_call', 'running', 1, 5, 'dead-worker', now() + interval '1 hour', now())
         returning id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // The operator cancels it; its worker is dead and never hears of it.
    assert_eq!(
        admin::cancel(&db.pool, id).await.unwrap(),
        jobs::JobState::Running
    );
    sqlx::query(
        "update onboard.job set lease_expires_at = now() - interval '1 second' where id = $1",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    assert_eq!(LeaseReaper::default().run_once(&mut conn).await.unwrap(), 1);
    let (state, finalized, last_error): (String, bool, String) = sqlx::query_as(
        "select state::text, finalized_at is not null, errors[cardinality(errors)]->>'kind'
           from onboard.job where id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (state.as_str(), finalized, last_error.as_str()),
        ("cancelled", true, "lease_expired")
    );
}
