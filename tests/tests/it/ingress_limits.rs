//! The webhook under hostile or unlucky conditions (issue 9 §15): a rejected delivery is told a
//! fixed message per error class, never parser or database text; the group-commit write queue
//! is bounded; a request is answered 2xx iff its delivery committed (one answered 503 is never
//! written later).

use std::time::Duration;

use ingress::inbox_writer::{InboxWriter, WriteError, WriterStats};
use integration_tests::{TestDb, fresh_db, wait_for};
use onboarding::inbox::OwnedEntry;
use serde_json::Value;
use sqlx::{Connection, PgConnection};

const SECRET: &str = "whsec_dGVzdC1vbmx5LW9uYm9hcmQtd2ViaG9vay1zZWNyZXQ=";

async fn start_ingress(db: &TestDb, db_timeout: Duration) -> ingress::startup::Running {
    let secrets =
        ingress::settings::WebhookSecrets::parse(&SECRET.to_owned().into()).expect("secret");
    let mut settings = ingress::settings::Settings::new(secrets);
    settings.ingress_addr = "127.0.0.1:0".parse().unwrap();
    settings.dashboard_addr = None;
    settings.db_timeout = db_timeout;
    ingress::startup::spawn(db.pool.clone(), &settings)
        .await
        .expect("ingress")
}

async fn send(ingress: &ingress::startup::Running, id: &str, body: &[u8]) -> (u16, Value) {
    let url = format!("http://{}/webhooks/clerk", ingress.ingress_addr);
    let (status, text) = ingress::send::send_event(&url, SECRET, body, Some(id.to_owned()), None)
        .await
        .unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_rejected_delivery_gets_a_fixed_message_that_echoes_no_parser_or_database_text() {
    let db = fresh_db().await;
    let ingress = start_ingress(&db, Duration::from_secs(2)).await;
    let bodies: [(&str, &[u8]); 6] = [
        (
            "msg_echo1",
            br#"{"type":"user.updated","data":"CANARY-jane@example.com"}"#,
        ),
        ("msg_echo2", br#"not json CANARY"#),
        ("msg_echo3", br#"{"type":"CANARY type","data":{}}"#),
        (
            "msg_echo4",
            br#"{"type":"organization.created","data":{"id":"CANARY"}}"#,
        ),
        (
            "msg_echo5",
            br#"{"type":"user.updated","data":{"x":"\u0000CANARY"}}"#,
        ),
        (
            "msg_echo6",
            br#"{"type":"user.updated","data":{"CANARY":1e999999}}"#,
        ),
    ];
    let fixed = [
        "not a Clerk event: the body is not UTF-8 text",
        "not a Clerk event: the body is not a Clerk event envelope (a JSON object with a string `type` and an object `data`)",
        "not a Clerk event: `type` is not a Clerk event type",
        "not a Clerk event: organization.created needs a valid organization id in `data.id`",
        "not a Clerk event: the payload cannot be stored (it contains a value PostgreSQL refuses, such as \\u0000)",
    ];
    for (id, body) in bodies {
        let (status, answer) = send(&ingress, id, body).await;
        assert_eq!(status, 400, "{id}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_event", "{id}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            fixed.contains(&message),
            "{id}: the message is not one of the fixed ones: {message}"
        );
    }
    // Operators still see the detail.
    let reason: String = sqlx::query_scalar(
        "select reason from onboard.rejected_delivery where svix_id = 'msg_echo1'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(reason.contains("invalid type"), "{reason}");
    let _ = ingress.shutdown().await;
}

fn entry(svix_id: &str) -> OwnedEntry {
    OwnedEntry {
        svix_id: svix_id.to_owned(),
        event_type: "user.created".into(),
        payload: r#"{"type":"user.created","data":{"id":"user_1"}}"#.into(),
        svix_timestamp: 1,
        svix_signature: "v1,x".into(),
        kind: Some("clerk.user.created"),
    }
}

/// Holds an uncommitted inbox row for `svix_id`: a batch storing that id waits on it.
async fn block_on(db: &TestDb, svix_id: &str) -> PgConnection {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("begin").execute(&mut conn).await.unwrap();
    sqlx::query(
        "insert into onboard.inbox (svix_id, event_type, payload, svix_timestamp, svix_signature)
         values ($1, 'user.created', '{}', 1, 'v1,x')",
    )
    .bind(svix_id)
    .execute(&mut conn)
    .await
    .unwrap();
    conn
}

/// Waits until a batch's statement is blocked on a lock.
async fn wait_blocked(db: &TestDb) {
    wait_for(
        "a batch to block on the held row",
        Duration::from_secs(30),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity
              where datname = current_database() and wait_event_type = 'Lock'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        },
    )
    .await;
}

async fn stored(db: &TestDb, svix_id: &str) -> bool {
    sqlx::query_scalar("select exists (select 1 from onboard.inbox where svix_id = $1)")
        .bind(svix_id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_full_write_queue_refuses_a_delivery_at_once_and_never_writes_it() {
    let db = fresh_db().await;
    let writer = InboxWriter::spawn_with_capacity(db.pool.clone(), 2);
    let long = Duration::from_secs(300);
    let mut blocker = block_on(&db, "msg_full_block").await;
    let first = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.receive(entry("msg_full_block"), long).await })
    };
    wait_blocked(&db).await;
    // Polled once each without yielding, so the collector takes none of them: two fill the
    // queue and the third is refused on its first poll, while the batch is still blocked (an
    // unbounded queue would accept it and hold it until its 300 s deadline).
    let mut queued = Vec::new();
    for id in ["msg_full_a", "msg_full_b"] {
        let mut call = Box::pin(writer.receive(entry(id), long));
        assert!(
            futures::poll!(&mut call).is_pending(),
            "{id} was not queued"
        );
        queued.push(call);
    }
    assert_eq!(writer.queued(), 2);
    let mut refused = Box::pin(writer.receive(entry("msg_full_refused"), long));
    match futures::poll!(&mut refused) {
        std::task::Poll::Ready(Err(WriteError::Full)) => {}
        other => panic!("a full queue must refuse at once, got {other:?}"),
    }
    sqlx::query("rollback").execute(&mut blocker).await.unwrap();
    assert!(first.await.unwrap().unwrap().new);
    for call in queued {
        assert!(call.await.unwrap().new);
    }
    assert!(!stored(&db, "msg_full_refused").await);
    for id in ["msg_full_block", "msg_full_a", "msg_full_b"] {
        assert!(stored(&db, id).await, "{id}");
    }
}

#[tokio::test]
async fn a_request_answered_503_is_never_written_and_one_a_batch_took_is_answered_by_its_commit() {
    let db = fresh_db().await;
    let ingress = start_ingress(&db, Duration::from_millis(300)).await;
    let body = br#"{"type":"user.created","data":{"id":"user_1"}}"#;
    let mut blocker = block_on(&db, "msg_abandon_block").await;
    let taken = {
        let url = format!("http://{}/webhooks/clerk", ingress.ingress_addr);
        tokio::spawn(async move {
            ingress::send::send_event(&url, SECRET, body, Some("msg_abandon_block".into()), None)
                .await
                .unwrap()
        })
    };
    wait_blocked(&db).await;
    // Queued behind the blocked batch past its deadline: 503, and abandoned.
    let (status, answer) = send(&ingress, "msg_abandoned", body).await;
    assert_eq!(status, 503, "{answer}");

    sqlx::query("rollback").execute(&mut blocker).await.unwrap();
    // The delivery the batch had taken waited for its commit, past the deadline: 204.
    let (status, text) = taken.await.unwrap();
    assert_eq!(status, 204, "{text}");
    // A later delivery is written after anything queued before it.
    let (status, answer) = send(&ingress, "msg_after", body).await;
    assert_eq!(status, 204, "{answer}");
    assert!(stored(&db, "msg_abandon_block").await);
    assert!(stored(&db, "msg_after").await);
    assert!(
        !stored(&db, "msg_abandoned").await,
        "a delivery answered 503 was written"
    );
    let _ = ingress.shutdown().await;
}

#[tokio::test]
async fn a_lone_delivery_is_written_by_its_own_request_and_deliveries_that_queue_go_as_one_batch() {
    let db = fresh_db().await;
    let writer = InboxWriter::spawn(db.pool.clone());
    let long = Duration::from_secs(300);
    let stats = |written_alone, batches, batched| WriterStats {
        written_alone,
        batches,
        batched,
    };

    // Nothing queued and nothing being written: the request writes its delivery itself.
    assert!(writer.receive(entry("msg_lone"), long).await.unwrap().new);
    assert_eq!(writer.stats(), stats(1, 0, 0));

    // A write held on a lock: deliveries that arrive meanwhile queue, then go as one batch.
    let mut blocker = block_on(&db, "msg_held").await;
    let held = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.receive(entry("msg_held"), long).await })
    };
    wait_blocked(&db).await;
    let mut queued = Vec::new();
    for n in 0..5 {
        let mut call = Box::pin(writer.receive(entry(&format!("msg_queued{n}")), long));
        assert!(futures::poll!(&mut call).is_pending(), "msg_queued{n}");
        queued.push(call);
    }
    sqlx::query("rollback").execute(&mut blocker).await.unwrap();
    assert!(held.await.unwrap().unwrap().new);
    for call in queued {
        assert!(call.await.unwrap().new);
    }
    assert_eq!(writer.stats(), stats(2, 1, 5));

    // After a batch of several, a lone delivery still goes through the collector (no lone
    // write slips in between batches under load); its batch of one reopens the direct path.
    assert!(writer.receive(entry("msg_after1"), long).await.unwrap().new);
    assert_eq!(writer.stats(), stats(2, 2, 6));
    assert!(writer.receive(entry("msg_after2"), long).await.unwrap().new);
    assert_eq!(writer.stats(), stats(3, 2, 6));

    let stored: i64 = sqlx::query_scalar("select count(*) from onboard.inbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let jobs: i64 = sqlx::query_scalar("select count(*) from onboard.job")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((stored, jobs), (9, 9));
}
