//! What the dashboard shows of one job and of the inbox: every attempt of a job with its
//! time, worker, duration and error; each delivery's count of redeliveries.

use integration_tests::dashboard::{Dashboard, Session, add_operator};
use integration_tests::stack::{SECRET, Stack, StackOptions, user_created};
use serde_json::Value;

async fn operator_session(stack: &Stack) -> (Dashboard, Session) {
    add_operator(&stack.db.pool, "olga", dashboard::account::Role::Operator).await;
    let d = Dashboard::spawn(stack.db.pool.clone()).await;
    let session = Session::login(&d, "olga").await;
    (d, session)
}

#[tokio::test]
async fn a_job_shows_every_attempt_with_its_time_worker_duration_and_error() {
    let stack = Stack::start(StackOptions::default()).await;
    let (_d, op) = operator_session(&stack).await;
    let (org, user) = ("org_attempts1", "user_attempts1");
    stack.sandbox.register(org, "acme-flaky-twilio").await;
    stack
        .deliver_new_org(org, "acme-flaky-twilio", user, "owner@attempts.test")
        .await;
    stack.wait_saga(org, "completed").await;
    let job: i64 = sqlx::query_scalar(
        "select j.id from onboard.job j join onboard.onboarding o on (j.args->>'onboarding_id')::bigint = o.id
          where o.clerk_org_id = $1 and j.kind = 'onboarding.twilio_subaccount'",
    )
    .bind(org)
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();

    // Twilio answered 503 twice, then created the account: three attempts.
    let detail = op.get_json(&format!("/api/jobs/{job}")).await;
    let attempts = detail["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{detail:#}");
    for (n, a) in attempts.iter().enumerate() {
        assert_eq!(a["attempt"], n + 1, "{a}");
        assert!(a["started_at"].is_string(), "{a}");
        assert!(a["ended_at"].is_string(), "{a}");
        assert!(a["duration_ms"].as_i64().is_some_and(|ms| ms >= 0), "{a}");
    }
    for failed in &attempts[..2] {
        assert!(
            failed["worker"].as_str().is_some_and(|w| !w.is_empty()),
            "{failed}"
        );
        assert!(
            failed["error"].as_str().unwrap().contains("503"),
            "{failed}"
        );
    }
    assert_eq!(attempts[2]["outcome"], "completed");
    assert_eq!(attempts[2]["error"], Value::Null);

    let page = op.get(&format!("/jobs/{job}")).await.text().await.unwrap();
    let table = &page[page.find("id=\"attempts\"").expect("the attempts table")..];
    let table = &table[..table.find("</table>").unwrap()];
    assert_eq!(table.matches("<tr>").count(), 4, "a header and 3 attempts");
    assert_eq!(table.matches("class=\"duration\">").count(), 3);
    assert!(
        table.matches(" ms</td>").count() + table.matches(" s</td>").count() >= 3,
        "every duration is shown: {table}"
    );
    let worker = attempts[0]["worker"].as_str().unwrap();
    assert!(table.contains(worker), "the worker is shown");
    assert!(table.contains("503"), "the error is shown");
    stack.stop().await;
}

#[tokio::test]
async fn the_inbox_counts_how_often_a_delivery_was_redelivered() {
    let stack = Stack::start(StackOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let (_d, op) = operator_session(&stack).await;
    let url = format!("http://{}/webhooks/clerk", stack.ingress.ingress_addr);
    let body = serde_json::to_vec(&user_created("user_dup1", "dup@inbox.test")).unwrap();
    // The same signed delivery, three times (Svix's retries keep the svix-id).
    for _ in 0..3 {
        let (status, text) =
            ingress::send::send_event(&url, SECRET, &body, Some("msg_dup_three".into()), None)
                .await
                .unwrap();
        assert_eq!(status, 204, "{text}");
    }
    let once = serde_json::to_vec(&user_created("user_once1", "once@inbox.test")).unwrap();
    ingress::send::send_event(&url, SECRET, &once, Some("msg_once".into()), None)
        .await
        .unwrap();

    let inbox = op.get_json("/api/inbox").await;
    let by_id = |svix: &str| {
        inbox["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["svix_id"] == svix)
            .cloned()
            .unwrap_or_else(|| panic!("{svix} in {inbox:#}"))
    };
    assert_eq!(by_id("msg_dup_three")["duplicates"], 2);
    assert_eq!(by_id("msg_once")["duplicates"], 0);
    let page = op.get("/inbox").await.text().await.unwrap();
    assert!(
        page.contains("<td class=\"duplicates\">2</td>"),
        "the page shows the count"
    );
    stack.stop().await;
}

#[tokio::test]
async fn queues_count_runnable_waiting_and_running_jobs_per_queue() {
    let db = integration_tests::fresh_db().await;
    add_operator(&db.pool, "olga", dashboard::account::Role::Operator).await;
    let d = Dashboard::spawn(db.pool.clone()).await;
    let op = Session::login(&d, "olga").await;
    let mut conn = db.pool.acquire().await.unwrap();
    for (queue, n, delay) in [
        ("alpha", 3, None),
        ("alpha", 2, Some(3600)),
        ("beta", 1, None),
    ] {
        for _ in 0..n {
            let mut job = jobs::NewJob::new("test.noop", serde_json::json!({})).queue(queue);
            if let Some(s) = delay {
                job = job.run_at(chrono::Utc::now() + chrono::Duration::seconds(s));
            }
            jobs::enqueue(&mut conn, &job).await.unwrap();
        }
    }
    // One of beta's jobs is due again after a failed attempt; one of alpha's is running.
    sqlx::query(
        "update onboard.job set state = 'retryable', run_at = now() - interval '1 minute'
          where id = (select min(id) from onboard.job where queue = 'beta')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "update onboard.job set state = 'running', attempt = 1, attempted_at = now(),
                lease_owner = 'w', lease_expires_at = now() + interval '1 minute'
          where id = (select min(id) from onboard.job where queue = 'alpha')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let queues = op.get_json("/api/queues").await;
    let row = |name: &str| {
        let q = queues["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {queues:#}"));
        (
            q["available"].as_i64().unwrap(),
            q["waiting"].as_i64().unwrap(),
            q["running"].as_i64().unwrap(),
            q["capped"].as_bool().unwrap(),
            q["oldest_age_s"].as_f64().is_some(),
        )
    };
    assert_eq!(row("alpha"), (2, 2, 1, false, true));
    assert_eq!(row("beta"), (1, 0, 0, false, true));
}

/// A dashboard on a fresh database and a viewer's session on it.
async fn viewer_on_fresh_db() -> (integration_tests::TestDb, Dashboard, Session) {
    let db = integration_tests::fresh_db().await;
    add_operator(&db.pool, "olga", dashboard::account::Role::Viewer).await;
    let d = Dashboard::spawn(db.pool.clone()).await;
    let session = Session::login(&d, "olga").await;
    (db, d, session)
}

/// Enqueues a no-op job `i` on `queue`.
async fn enqueue_noop(pool: &sqlx::PgPool, queue: &str, i: i32) -> i64 {
    let mut conn = pool.acquire().await.unwrap();
    let job = jobs::NewJob::new("test.noop", serde_json::json!({ "i": i })).queue(queue);
    jobs::enqueue(&mut conn, &job).await.unwrap().id
}

/// A job that ran once and completed.
const FINISHED: &str =
    "state = 'completed', attempt = 1, attempted_at = now(), finalized_at = now()";

/// Applies `set` (an `update … set` list) to job `id`, as a worker's or an operator's change would.
async fn set_job(pool: &sqlx::PgPool, id: i64, set: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "update onboard.job set {set} where id = $1"
    )))
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn the_overview_counts_jobs_and_onboardings_by_state_and_raises_each_alert() {
    let (db, _d, op) = viewer_on_fresh_db().await;
    let empty = op.get("/").await.text().await.unwrap();
    assert!(empty.contains("None: every job has finished."), "{empty}");
    let mut ids = Vec::new();
    for (queue, n) in [("alpha", 3), ("beta", 1)] {
        for i in 0..n {
            ids.push(enqueue_noop(&db.pool, queue, i).await);
        }
    }
    // One alpha job waits for its time, one runs past its lease, one finished.
    set_job(
        &db.pool,
        ids[0],
        "state = 'scheduled', run_at = now() + interval '1 hour'",
    )
    .await;
    set_job(
        &db.pool,
        ids[1],
        "state = 'running', attempt = 1, attempted_at = now() - interval '2 minutes',
         lease_owner = 'w1', lease_expires_at = now() - interval '1 minute'",
    )
    .await;
    set_job(&db.pool, ids[2], FINISHED).await;
    // Onboardings: each alerting state, a saga running for 11 minutes (past the default 10), and
    // one that has just started (no alert).
    for (org, state, age_minutes) in [
        ("org_cf", "compensation_failed", 0),
        ("org_cwe", "completed_with_errors", 0),
        ("org_old", "running", 11),
        ("org_new", "running", 0),
        ("org_ok", "completed", 0),
    ] {
        sqlx::query(
            "insert into onboard.onboarding (clerk_org_id, state, source, request, created_at, updated_at)
             values ($1, $2, 'webhook', jsonb_build_object('org_id', $1::text, 'name', $1::text, 'slug', $1::text),
                     now() - $3 * interval '1 minute', now())",
        )
        .bind(org)
        .bind(state)
        .bind(age_minutes)
        .execute(&db.pool)
        .await
        .unwrap();
    }

    let o = op.get_json("/api/overview").await;
    let live: Vec<(String, String, i64)> = o["live"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["queue"].as_str().unwrap().to_owned(),
                c["state"].as_str().unwrap().to_owned(),
                c["count"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut live_sorted = live.clone();
    live_sorted.sort();
    assert_eq!(
        live_sorted,
        [
            ("alpha".to_owned(), "running".to_owned(), 1),
            ("alpha".to_owned(), "scheduled".to_owned(), 1),
            ("beta".to_owned(), "available".to_owned(), 1),
        ],
        "{o:#}"
    );
    assert_eq!(o["live_capped"], serde_json::json!([]));
    let completed = o["finished"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["state"] == "completed")
        .unwrap();
    assert_eq!(completed["count"], 1, "{o:#}");
    assert_eq!(o["oldest_available"][0], ids[3], "{o:#}");
    assert_eq!(o["last_hour"].as_array().unwrap().len(), 60);
    let finished_now: i64 = o["last_hour"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["completed"].as_i64().unwrap())
        .sum();
    assert_eq!(finished_now, 1, "{o:#}");
    let sagas: Vec<(String, i64)> = o["onboardings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["state"].as_str().unwrap().to_owned(),
                c["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sagas,
        [
            ("running".to_owned(), 2),
            ("completed".to_owned(), 1),
            ("completed_with_errors".to_owned(), 1),
            ("compensation_failed".to_owned(), 1),
        ]
    );
    let orgs = |alert: &str| -> Vec<String> {
        o["alerts"][alert]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["org_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(orgs("compensation_failed"), ["org_cf"]);
    assert_eq!(orgs("completed_with_errors"), ["org_cwe"]);
    assert_eq!(orgs("not_terminal"), ["org_old"]);
    assert_eq!(o["alerts"]["past_lease"], serde_json::json!([ids[1]]));

    // The page shows the same.
    let html = op.get("/").await.text().await.unwrap();
    for text in ["org_cf", "org_cwe", "org_old", "alpha", "beta"] {
        assert!(html.contains(text), "the overview page shows {text}");
    }
    assert!(
        !html.contains("org_new"),
        "a saga just started raises no alert"
    );
    assert!(!html.contains("None: every job has finished."));
}

#[tokio::test]
async fn a_job_page_says_finished_only_for_a_finished_job() {
    let (db, _d, op) = viewer_on_fresh_db().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(enqueue_noop(&db.pool, "default", i).await);
    }
    set_job(
        &db.pool,
        ids[0],
        "state = 'running', attempt = 1, attempted_at = now(),
         lease_owner = 'w1', lease_expires_at = now() + interval '1 minute'",
    )
    .await;
    set_job(&db.pool, ids[1], FINISHED).await;

    let page = async |id: i64| op.get(&format!("/jobs/{id}")).await.text().await.unwrap();
    let running = page(ids[0]).await;
    assert!(running.contains("last attempt started"), "{running}");
    assert!(!running.contains("finished"), "{running}");
    assert!(page(ids[1]).await.contains("finished "));
    assert!(page(ids[2]).await.contains("not attempted yet"));
}
