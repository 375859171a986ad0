//! A step attempt's success in one statement (`onboarding::saga::step_attempt_succeeded`): the
//! step, what follows it and the attempt's own job, fenced by the attempt.

use integration_tests::fresh_db;
use onboarding::id::ClerkOrgId;
use onboarding::request::{Creator, OnboardingRequest, Source};
use onboarding::saga::{self, Attempt, StepSucceeded};
use serde_json::json;
use sqlx::PgConnection;

/// Starts a saga for `org` and claims its first job as attempt 1 would; returns the locked
/// saga (in `tx`'s caller) and that job's id.
async fn started(conn: &mut PgConnection, org: &str) -> (saga::Saga, i64) {
    let request = OnboardingRequest {
        org_id: ClerkOrgId::parse(org).unwrap(),
        name: Some("Acme".into()),
        slug: Some("acme".into()),
        creator: Creator::default(),
        source: Source::Api,
    };
    let started = onboarding::start::start(conn, &request).await.unwrap();
    let job: i64 = sqlx::query_scalar(
        "update onboard.job set state = 'running', attempt = 1, attempted_at = now()
          where args->>'onboarding_id' = $1::text and state = 'available' returning id",
    )
    .bind(started.onboarding_id.to_string())
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    let saga = saga::lock(conn, started.onboarding_id)
        .await
        .unwrap()
        .unwrap();
    (saga, job)
}

async fn job_state(conn: &mut PgConnection, id: i64) -> String {
    sqlx::query_scalar("select state::text from onboard.job where id = $1")
        .bind(id)
        .fetch_one(conn)
        .await
        .unwrap()
}

async fn step(conn: &mut PgConnection, saga: i64, name: &str) -> (String, i32, serde_json::Value) {
    sqlx::query_as::<_, (String, i32, sqlx::types::Json<serde_json::Value>)>(
        "select state, attempts, output from onboard.onboarding_step where onboarding_id = $1 and name = $2",
    )
    .bind(saga)
    .bind(name)
    .fetch_one(conn)
    .await
    .map(|(state, attempts, output)| (state, attempts, output.0))
    .unwrap()
}

#[tokio::test]
async fn a_step_success_records_the_step_enqueues_the_next_and_completes_its_own_job_once() {
    let db = fresh_db().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let (saga, own) = started(&mut conn, "org_succeed1").await;
    let attempt = Attempt {
        job_id: own,
        attempt: 1,
    };

    // The next step touches only our database: only the step is recorded.
    let first = saga::step_attempt_succeeded(
        &mut conn,
        &saga,
        "create_org_record",
        &json!({ "organization_id": 1 }),
        attempt,
    )
    .await
    .unwrap();
    assert_eq!(first, StepSucceeded::Local("default_permissions"));
    assert_eq!(job_state(&mut conn, own).await, "running");

    // A live job already holds the next step's key: it is kept, and the success still settles.
    let twilio_key = format!("onboarding:{}:twilio_subaccount", saga.id);
    let holder = jobs::enqueue(
        &mut conn,
        &jobs::NewJob::new(
            "onboarding.twilio_subaccount",
            json!({ "onboarding_id": saga.id }),
        )
        .queue("onboarding")
        .unique_key(twilio_key.clone()),
    )
    .await
    .unwrap()
    .id;
    let settled = saga::step_attempt_succeeded(
        &mut conn,
        &saga,
        "default_permissions",
        &json!({ "grants": 45 }),
        attempt,
    )
    .await
    .unwrap();
    assert_eq!(settled, StepSucceeded::Settled { held: true });
    assert_eq!(job_state(&mut conn, own).await, "completed");
    let live: Vec<i64> = sqlx::query_scalar(
        "select id from onboard.job where unique_key = $1
            and state in ('available', 'scheduled', 'running', 'retryable')",
    )
    .bind(&twilio_key)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert_eq!(live, [holder]);
    for (name, output) in [
        ("create_org_record", json!({ "organization_id": 1 })),
        ("default_permissions", json!({ "grants": 45 })),
    ] {
        assert_eq!(
            step(&mut conn, saga.id, name).await,
            ("done".to_owned(), 1, output),
            "{name}: done, its one attempt counted, its output stored"
        );
    }

    // The same attempt again no longer holds its (completed) job: it reports so.
    let again =
        saga::step_attempt_succeeded(&mut conn, &saga, "default_permissions", &json!({}), attempt)
            .await
            .unwrap();
    assert_eq!(again, StepSucceeded::Settled { held: false });
}

#[tokio::test]
async fn the_last_step_success_ends_the_saga_completed_with_its_metadata_job() {
    let db = fresh_db().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let (saga, own) = started(&mut conn, "org_succeed2").await;
    sqlx::query("insert into onboard.organization (clerk_org_id) values ($1)")
        .bind(&saga.clerk_org_id)
        .execute(&mut *conn)
        .await
        .unwrap();
    let settled = saga::step_attempt_succeeded(
        &mut conn,
        &saga,
        "welcome_email",
        &json!({ "email_id": "em_1" }),
        Attempt {
            job_id: own,
            attempt: 1,
        },
    )
    .await
    .unwrap();
    assert_eq!(settled, StepSucceeded::Settled { held: true });
    assert_eq!(job_state(&mut conn, own).await, "completed");
    let (state, status, sync): (String, String, Option<String>) = sqlx::query_as(
        "select o.state, g.onboarding_status,
                (select j.args->>'state' from onboard.job j
                  where j.unique_key = 'onboarding:' || o.id || ':sync:completed' and j.state = 'available')
           from onboard.onboarding o join onboard.organization g using (clerk_org_id) where o.id = $1",
    )
    .bind(saga.id)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        (state.as_str(), status.as_str(), sync.as_deref()),
        ("completed", "active", Some("completed"))
    );
    assert_eq!(step(&mut conn, saga.id, "welcome_email").await.0, "done");
}

#[tokio::test]
async fn granting_the_defaults_again_counts_every_grant_the_organization_has() {
    let db = fresh_db().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let org: i64 = sqlx::query_scalar(
        "insert into onboard.organization (clerk_org_id) values ('org_grants1') returning id",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    let all = onboarding::permissions::grants().len() as i64;

    let first = onboarding::permissions::grant_defaults(&mut conn, org)
        .await
        .unwrap();
    assert_eq!(first, all);
    // Some grants already there (a retry after a lost commit, or a compensation cut short):
    // the count is of the rows there are, not of the rows this call inserted.
    sqlx::query(
        "delete from onboard.role_permission where organization_id = $1 and role = 'VIEWER'",
    )
    .bind(org)
    .execute(&mut *conn)
    .await
    .unwrap();
    let again = onboarding::permissions::grant_defaults(&mut conn, org)
        .await
        .unwrap();
    assert_eq!(again, all);
    let rows: i64 = sqlx::query_scalar(
        "select count(*) from onboard.role_permission where organization_id = $1",
    )
    .bind(org)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(rows, all);
}
