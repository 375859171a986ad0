//! Retention of the inbox, rejected deliveries and API idempotency records (issue 9 §13): each
//! window on its own, dedup outliving the payload, the round's lock, and the worker's periodic
//! job.

use std::time::Duration;

use integration_tests::stack::{provider_settings, spawn_worker_runtime};
use integration_tests::{fresh_db, wait_for};
use onboarding::id::SvixId;
use onboarding::inbox::{self, ClerkEnvelope, InboxEntry};
use onboarding::retention::{DataRetention, ROUND_LOCK};
use sqlx::PgPool;

const DAY: Duration = Duration::from_secs(86_400);

/// Stores a `user.created` delivery through the ingress's statement, received `age_days` ago.
async fn delivery(pool: &PgPool, svix_id: &str, age_days: i64) -> i64 {
    let body = format!(r#"{{"type":"user.created","data":{{"id":"user_{svix_id}"}}}}"#);
    let envelope = ClerkEnvelope::parse(body.as_bytes()).unwrap();
    let id = SvixId::parse(svix_id).unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let received = inbox::receive(
        &mut conn,
        InboxEntry {
            svix_id: &id,
            svix_timestamp: 1,
            svix_signature: "v1,c2lnbmF0dXJl",
            payload: &body,
            envelope: &envelope,
        },
    )
    .await
    .unwrap();
    let inbox_id = received.inbox_id.unwrap();
    sqlx::query(
        "update onboard.inbox set received_at = now() - $2 * interval '1 day' where id = $1",
    )
    .bind(inbox_id)
    .bind(age_days)
    .execute(pool)
    .await
    .unwrap();
    inbox_id
}

/// (payload present, signature present) of an inbox row, or `None` once deleted.
async fn inbox_row(pool: &PgPool, svix_id: &str) -> Option<(bool, bool)> {
    sqlx::query_as(
        "select payload is not null, svix_signature is not null from onboard.inbox where svix_id = $1",
    )
    .bind(svix_id)
    .fetch_optional(pool)
    .await
    .unwrap()
}

async fn redelivered_is_new(pool: &PgPool, svix_id: &str) -> bool {
    let body = r#"{"type":"user.created","data":{"id":"user_again"}}"#;
    let envelope = ClerkEnvelope::parse(body.as_bytes()).unwrap();
    let id = SvixId::parse(svix_id).unwrap();
    let mut tx = pool.begin().await.unwrap();
    let received = inbox::receive(
        &mut tx,
        InboxEntry {
            svix_id: &id,
            svix_timestamp: 2,
            svix_signature: "v1,x",
            payload: body,
            envelope: &envelope,
        },
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    received.new
}

#[tokio::test]
async fn inbox_payloads_go_after_their_window_while_the_svix_id_dedups_until_its_own() {
    let db = fresh_db().await;
    let pool = &db.pool;
    delivery(pool, "msg_fresh", 1).await;
    let old = delivery(pool, "msg_old", 40).await;
    delivery(pool, "msg_ancient", 400).await;

    let report = DataRetention::default().run_once(pool).await.unwrap();
    assert!(report.ran);
    assert_eq!((report.payloads, report.inbox), (1, 1), "{report:?}");
    assert_eq!(inbox_row(pool, "msg_fresh").await, Some((true, true)));
    assert_eq!(
        inbox_row(pool, "msg_old").await,
        Some((false, false)),
        "past 30 days the payload and signature go, the svix-id stays"
    );
    assert_eq!(inbox_row(pool, "msg_ancient").await, None);
    // The kept svix-id still deduplicates a replay; the deleted one no longer does.
    assert!(!redelivered_is_new(pool, "msg_old").await);
    assert!(redelivered_is_new(pool, "msg_ancient").await);
    // A job that meets a payload past its retention fails for good, not for ever.
    let mut conn = pool.acquire().await.unwrap();
    let error = onboarding::clerk_event::handle(&mut conn, "clerk.user.created", old)
        .await
        .unwrap_err();
    assert!(error.is_permanent(), "{error}");

    // Configurable: a 12-hour payload window strips the fresh one too.
    let short = DataRetention {
        payload: DAY / 2,
        ..DataRetention::default()
    };
    assert_eq!(short.run_once(pool).await.unwrap().payloads, 1);
    assert_eq!(inbox_row(pool, "msg_fresh").await, Some((false, false)));
}

#[tokio::test]
async fn rejected_deliveries_and_idempotency_records_go_after_their_windows() {
    let db = fresh_db().await;
    let pool = &db.pool;
    for (svix_id, age) in [("msg_rej_old", 31), ("msg_rej_fresh", 1)] {
        sqlx::query(
            "insert into onboard.rejected_delivery (svix_id, svix_timestamp, reason, body, first_seen_at, last_seen_at)
             values ($1, 1, 'x', '\\x00', now() - $2 * interval '1 day', now() - $2 * interval '1 day')",
        )
        .bind(svix_id)
        .bind(age)
        .execute(pool)
        .await
        .unwrap();
    }
    let (key, _) = onboarding::api_key::create(pool, "retention")
        .await
        .unwrap();
    for (idempotency_key, age) in [("idem-old", 8), ("idem-fresh", 1)] {
        sqlx::query(
            "insert into onboard.api_idempotency (api_key_id, idempotency_key, request_hash, created_at)
             values ($1, $2, '\\x00', now() - $3 * interval '1 day')",
        )
        .bind(key)
        .bind(idempotency_key)
        .bind(age)
        .execute(pool)
        .await
        .unwrap();
    }
    let report = DataRetention::default().run_once(pool).await.unwrap();
    assert_eq!((report.rejected, report.idempotency), (1, 1), "{report:?}");
    let rejected: Vec<String> = sqlx::query_scalar("select svix_id from onboard.rejected_delivery")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(rejected, ["msg_rej_fresh"]);
    let keys: Vec<String> =
        sqlx::query_scalar("select idempotency_key from onboard.api_idempotency")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(keys, ["idem-fresh"]);

    let short = DataRetention {
        rejected: DAY / 2,
        idempotency: DAY / 2,
        ..DataRetention::default()
    };
    let report = short.run_once(pool).await.unwrap();
    assert_eq!((report.rejected, report.idempotency), (1, 1), "{report:?}");
}

#[tokio::test]
async fn a_round_does_nothing_while_another_replica_holds_its_lock() {
    let db = fresh_db().await;
    let pool = &db.pool;
    delivery(pool, "msg_locked", 400).await;
    let mut other = pool.begin().await.unwrap();
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(ROUND_LOCK)
        .execute(&mut *other)
        .await
        .unwrap();
    let report = DataRetention::default().run_once(pool).await.unwrap();
    assert!(!report.ran);
    assert_eq!(inbox_row(pool, "msg_locked").await, Some((true, true)));
    other.rollback().await.unwrap();
    let report = DataRetention::default().run_once(pool).await.unwrap();
    assert!(report.ran);
    assert_eq!(inbox_row(pool, "msg_locked").await, None);
}

#[tokio::test]
async fn the_worker_schedules_the_retention_job_and_it_applies_the_windows() {
    let db = fresh_db().await;
    delivery(&db.pool, "msg_worker_old", 40).await;
    delivery(&db.pool, "msg_worker_ancient", 400).await;
    let sandbox = sandbox::spawn("127.0.0.1:0".parse().unwrap(), Default::default())
        .await
        .unwrap();
    let providers = provider_settings(&sandbox.base_url(), Duration::from_secs(1))
        .providers()
        .unwrap();
    let (stop, worker) = spawn_worker_runtime(db.pool.clone(), providers);
    wait_for(
        "a completed retention job",
        Duration::from_secs(60),
        || async {
            let done: bool = sqlx::query_scalar(
                "select exists (select 1 from onboard.job where kind = $1 and state = 'completed')",
            )
            .bind(onboarding::retention::KIND)
            .fetch_one(&db.pool)
            .await
            .unwrap();
            done.then_some(())
        },
    )
    .await;
    assert_eq!(
        inbox_row(&db.pool, "msg_worker_old").await,
        Some((false, false))
    );
    assert_eq!(inbox_row(&db.pool, "msg_worker_ancient").await, None);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
}
