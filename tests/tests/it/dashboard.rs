//! The dashboard and admin API over real HTTP: the auth matrix (no session, viewer, CSRF,
//! Bearer tokens, expiry, logout, rate limit), every action with its audit record, and the
//! saga-aware actions on a real saga run by the worker against the sandbox.

use std::time::Duration;

use dashboard::account::Role;
use integration_tests::dashboard::{
    Dashboard, PASSWORD, Session, bearer, client, login_form, post_login,
};
use integration_tests::stack::{Stack, StackOptions};
use integration_tests::{fresh_db, wait_for};
use reqwest::header::{COOKIE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

async fn enqueue(pool: &PgPool, queue: &str, args: Value) -> i64 {
    let mut conn = pool.acquire().await.unwrap();
    jobs::enqueue(
        &mut conn,
        &jobs::NewJob::new("test.noop", args).queue(queue),
    )
    .await
    .unwrap()
    .id
}

async fn audit_results(pool: &PgPool, action: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "select operator, target, result from onboard.audit where action = $1 order by id",
    )
    .bind(action)
    .fetch_all(pool)
    .await
    .unwrap()
}

const ACTIONS: [&str; 3] = ["retry", "cancel", "discard"];

#[tokio::test]
async fn without_a_session_pages_redirect_to_login_and_the_api_answers_401() {
    let db = fresh_db().await;
    let d = Dashboard::spawn(db.pool.clone()).await;
    for page in [
        "/",
        "/jobs",
        "/jobs/1",
        "/queues",
        "/onboardings",
        "/onboardings/1",
        "/inbox",
        "/workers",
        "/audit",
    ] {
        let r = client().get(d.url(page)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{page}");
        let location = r.headers()["location"].to_str().unwrap();
        assert!(location.starts_with("/login?next="), "{page} → {location}");
    }
    for (method, path) in [
        (Method::GET, "/api/jobs"),
        (Method::GET, "/api/jobs/1"),
        (Method::POST, "/api/jobs/1/retry"),
        (Method::POST, "/api/jobs/bulk"),
        (Method::GET, "/api/onboardings"),
        (Method::POST, "/api/onboardings/1/restart"),
        (Method::GET, "/api/queues"),
        (Method::POST, "/api/queues/email/pause"),
        (Method::GET, "/api/inbox"),
        (Method::GET, "/api/rejected"),
        (Method::GET, "/api/workers"),
    ] {
        let r = client()
            .request(method.clone(), d.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthenticated");
    }
    // A made-up cookie or token is no better.
    let r = client()
        .get(d.url("/api/jobs"))
        .header(COOKIE, "onboard_session=deadbeef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = bearer(
        &d,
        Method::GET,
        "/api/jobs",
        &format!("opt_{}_{}", "a".repeat(16), "b".repeat(64)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn login_sets_a_strict_httponly_cookie_secure_behind_an_https_proxy() {
    let db = fresh_db().await;
    add_ops(&db.pool).await;
    let d = Dashboard::spawn(db.pool.clone()).await;
    let s = Session::login(&d, "olga").await;
    assert!(s.set_cookie.contains("HttpOnly"), "{}", s.set_cookie);
    assert!(s.set_cookie.contains("SameSite=Strict"), "{}", s.set_cookie);
    assert!(
        !s.set_cookie.contains("Secure"),
        "plain http: {}",
        s.set_cookie
    );
    let mut https = HeaderMap::new();
    https.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    let r = post_login(&d, "olga", PASSWORD, https).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/jobs", "back to `next`");
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );
    assert_eq!(s.get("/jobs").await.status(), StatusCode::OK);
    assert_eq!(audit_results(&db.pool, "login").await.len(), 2);
}

#[tokio::test]
async fn a_login_post_without_its_forms_csrf_token_or_cookie_is_403_and_logs_nobody_in() {
    let db = fresh_db().await;
    add_ops(&db.pool).await;
    let d = Dashboard::spawn(db.pool.clone()).await;
    let (cookie, token) = login_form(&d, HeaderMap::new()).await;
    let (_, other_token) = login_form(&d, HeaderMap::new()).await;
    let post = |cookie: Option<&str>, token: Option<&str>| {
        let mut fields = vec![("name", "olga"), ("password", PASSWORD)];
        if let Some(token) = token {
            fields.push(("login_csrf", token));
        }
        let mut request = client().post(d.url("/login")).form(&fields);
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie.to_owned());
        }
        request.send()
    };
    // A cross-site form has no cookie of ours, and cannot read the token of our form.
    for (what, c, t) in [
        ("neither", None, None),
        ("no token", Some(cookie.as_str()), None),
        ("no cookie", None, Some(token.as_str())),
        (
            "another form's token",
            Some(cookie.as_str()),
            Some(other_token.as_str()),
        ),
        ("an empty token", Some("onboard_login="), Some("")),
    ] {
        let r = post(c, t).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{what}");
        let sets_session = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("onboard_session="));
        assert!(!sets_session, "{what}: no session");
    }
    assert_eq!(
        sqlx::query_scalar::<_, i64>("select count(*) from onboard.operator_session")
            .fetch_one(&db.pool)
            .await
            .unwrap(),
        0
    );
    // The form's own token with its cookie logs in.
    let r = post(Some(&cookie), Some(&token)).await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("onboard_session=")
    );
    let results: Vec<String> = audit_results(&db.pool, "login")
        .await
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(results, ["csrf", "csrf", "csrf", "csrf", "csrf", "ok"]);
}

async fn add_ops(pool: &PgPool) {
    integration_tests::dashboard::add_operator(pool, "olga", Role::Operator).await;
    integration_tests::dashboard::add_operator(pool, "vic", Role::Viewer).await;
}

#[tokio::test]
async fn wrong_passwords_are_refused_and_logins_are_rate_limited_per_name() {
    let db = fresh_db().await;
    add_ops(&db.pool).await;
    let d = Dashboard::spawn(db.pool.clone()).await;
    let r = post_login(&d, "nobody", PASSWORD, HeaderMap::new()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "an unknown name");
    for _ in 0..5 {
        let r = post_login(&d, "olga", "not the password!", HeaderMap::new()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().get("set-cookie").is_none());
    }
    // Blocked now, even with the right password; another name is not.
    let r = post_login(&d, "olga", PASSWORD, HeaderMap::new()).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("set-cookie").is_none());
    let r = post_login(&d, "vic", PASSWORD, HeaderMap::new()).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let results: Vec<String> = audit_results(&db.pool, "login")
        .await
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(
        results.iter().filter(|r| *r == "bad_credentials").count(),
        6
    );
    assert_eq!(results.iter().filter(|r| *r == "rate_limited").count(), 1);
}

#[tokio::test]
async fn a_viewer_reads_everything_and_gets_403_for_every_action() {
    let db = fresh_db().await;
    add_ops(&db.pool).await;
    let job = enqueue(&db.pool, "default", json!({})).await;
    let d = Dashboard::spawn(db.pool.clone()).await;
    let viewer = Session::login(&d, "vic").await;
    for page in [
        "/",
        "/jobs",
        &format!("/jobs/{job}"),
        "/queues",
        "/onboardings",
        "/inbox",
        "/workers",
        "/audit",
    ] {
        let r = viewer.get(page).await;
        assert_eq!(r.status(), StatusCode::OK, "{page}");
        let html = r.text().await.unwrap();
        assert!(
            !html.contains("data-action="),
            "{page} shows no action button to a viewer"
        );
    }
    for path in [
        "/api/jobs",
        "/api/queues",
        "/api/onboardings",
        "/api/inbox",
        "/api/rejected",
        "/api/workers",
        "/api/overview",
        "/api/audit",
    ] {
        viewer.get_json(path).await;
    }
    let (_, token) = dashboard::account::create_token(&db.pool, "vic")
        .await
        .unwrap();
    let mut posts: Vec<(String, Option<Value>)> = ACTIONS
        .iter()
        .map(|a| (format!("/api/jobs/{job}/{a}"), None))
        .collect();
    posts.push((
        "/api/jobs/bulk".into(),
        Some(json!({"action": "cancel", "ids": [job]})),
    ));
    for a in ["restart", "retry", "cancel"] {
        posts.push((format!("/api/onboardings/1/{a}"), None));
    }
    for a in ["pause", "resume"] {
        posts.push((format!("/api/queues/default/{a}"), None));
    }
    posts.push((
        "/api/queues/default/limits".into(),
        Some(json!({"max_running": 1})),
    ));
    posts.push(("/api/inbox/1/replay".into(), None));
    for (path, body) in posts {
        let (status, body_out) = viewer.act(&path, body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "session POST {path}");
        assert_eq!(body_out["error"]["code"], "forbidden");
        let (status, _) = bearer(&d, Method::POST, &path, &token, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "bearer POST {path}");
    }
    let (status, _) = bearer(
        &d,
        Method::GET,
        "/api/onboardings/1?reveal=true",
        &token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a viewer cannot reveal");
    // A page form too.
    let r = viewer
        .post_form(&format!("/jobs/{job}/cancel"), &[("csrf", &viewer.csrf)])
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        jobs_state(&db.pool, job).await,
        "available",
        "nothing happened"
    );
}

async fn jobs_state(pool: &PgPool, id: i64) -> String {
    integration_tests::job_state(pool, id).await
}

#[tokio::test]
async fn a_cookie_post_without_or_with_a_wrong_csrf_token_is_403_and_bearer_needs_none() {
    let db = fresh_db().await;
    add_ops(&db.pool).await;
    let job = enqueue(&db.pool, "default", json!({})).await;
    let d = Dashboard::spawn(db.pool.clone()).await;
    let op = Session::login(&d, "olga").await;
    for csrf in [None, Some("wrong"), Some("")] {
        let (status, body) = op
            .post_api(&format!("/api/jobs/{job}/cancel"), csrf, None)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{csrf:?}");
        assert_eq!(body["error"]["code"], "csrf");
        let r = op
            .post_form(
                &format!("/jobs/{job}/cancel"),
                &[("csrf", csrf.unwrap_or("x"))],
            )
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "form {csrf:?}");
    }
    let r = op.post_form("/logout", &[("csrf", "wrong")]).await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "logout needs the token too"
    );
    assert_eq!(jobs_state(&db.pool, job).await, "available");

    let (_, token) = dashboard::account::create_token(&db.pool, "olga")
        .await
        .unwrap();
    let (status, body) = bearer(
        &d,
        Method::POST,
        &format!("/api/jobs/{job}/cancel"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "cancelled");
    // Revoked: 401.
    assert_eq!(
        dashboard::account::revoke_tokens(&db.pool, "olga")
            .await
            .unwrap(),
        1
    );
    let (status, _) = bearer(&d, Method::GET, "/api/jobs", &token, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_expired_session_is_refused_and_logout_ends_a_session() {
    let db = fresh_db().await;
    add_ops(&db.pool).await;
    let d = Dashboard::spawn(db.pool.clone()).await;
    let a = Session::login(&d, "olga").await;
    let b = Session::login(&d, "vic").await;
    assert_eq!(a.get("/api/jobs").await.status(), StatusCode::OK);
    sqlx::query("update onboard.operator_session set expires_at = now() - interval '1 second' where operator_id = (select id from onboard.operator where name = 'olga')")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(a.get("/api/jobs").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(a.get("/jobs").await.status(), StatusCode::SEE_OTHER);

    let r = b.post_form("/logout", &[("csrf", &b.csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        b.get("/api/jobs").await.status(),
        StatusCode::UNAUTHORIZED,
        "the old cookie is dead"
    );
    let left: i64 = sqlx::query_scalar("select count(*) from onboard.operator_session where operator_id = (select id from onboard.operator where name = 'vic')")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn job_actions_change_the_job_are_audited_and_a_wrong_state_is_409() {
    let db = fresh_db().await;
    add_ops(&db.pool).await;
    let d = Dashboard::spawn(db.pool.clone()).await;
    let op = Session::login(&d, "olga").await;
    let job = enqueue(&db.pool, "default", json!({"note": "x"})).await;

    let (status, body) = op.act(&format!("/api/jobs/{job}/discard"), None).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("discarded"))
    );
    let (status, body) = op.act(&format!("/api/jobs/{job}/discard"), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "wrong_state");
    let (status, body) = op.act(&format!("/api/jobs/{job}/retry"), None).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("available"))
    );
    let (status, body) = op.act(&format!("/api/jobs/{job}/cancel"), None).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    let (status, body) = op.act(&format!("/api/jobs/{job}/cancel"), None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::CONFLICT, &json!("wrong_state"))
    );
    // Unknown job, bad id, unknown action.
    assert_eq!(
        op.act("/api/jobs/999999/retry", None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        op.act("/api/jobs/abc/retry", None).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        op.act(&format!("/api/jobs/{job}/explode"), None).await.0,
        StatusCode::NOT_FOUND
    );
    // The page's form does the same and goes back.
    let r = op
        .post_form(
            &format!("/jobs/{job}/retry"),
            &[("csrf", &op.csrf), ("back", &format!("/jobs/{job}"))],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(jobs_state(&db.pool, job).await, "available");

    let detail = op.get_json(&format!("/api/jobs/{job}")).await;
    assert_eq!(detail["id"], job);
    assert_eq!(detail["args"]["note"], "x");
    let list = op.get_json("/api/jobs?state=available&queue=default").await;
    assert_eq!(list["items"][0]["id"], job);

    let audit: Vec<String> = sqlx::query_scalar(
        "select action || ':' || result from onboard.audit where target = $1 order by id",
    )
    .bind(format!("job:{job}"))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        audit,
        [
            "job.discard:ok",
            "job.discard:wrong_state",
            "job.retry:ok",
            "job.cancel:ok",
            "job.cancel:wrong_state",
            "job.explode:not_found",
            "job.retry:ok"
        ]
        .into_iter()
        .filter(|a| !a.starts_with("job.explode"))
        .collect::<Vec<_>>()
    );
    let page = op.get("/audit").await.text().await.unwrap();
    assert!(page.contains("job.cancel") && page.contains("olga"));
}

#[tokio::test]
async fn bulk_actions_take_ids_or_a_filter_and_keyset_pages_cover_every_job_once() {
    let db = fresh_db().await;
    add_ops(&db.pool).await;
    let d = Dashboard::spawn(db.pool.clone()).await;
    let op = Session::login(&d, "olga").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            enqueue(
                &db.pool,
                if i < 5 { "bulk" } else { "other" },
                json!({"n": i, "marker": format!("needle-{i}")}),
            )
            .await,
        );
    }
    let (status, body) = op
        .act(
            "/api/jobs/bulk",
            Some(json!({"action": "cancel", "ids": [ids[0], ids[1]]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ok"], 2);
    let (status, body) = op
        .act(
            "/api/jobs/bulk",
            Some(json!({"action": "discard", "filter": {"queue": "bulk", "state": "available"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["ok"].as_i64(), body["refused"].as_i64()),
        (Some(3), Some(0))
    );
    for (i, id) in ids.iter().enumerate() {
        let expected = match i {
            0 | 1 => "cancelled",
            2..=4 => "discarded",
            _ => "available",
        };
        assert_eq!(jobs_state(&db.pool, *id).await, expected, "job {i}");
    }
    // Refusals are per job: cancelling a finished job is refused, the others go on.
    let (_, body) = op
        .act(
            "/api/jobs/bulk",
            Some(json!({"action": "cancel", "ids": [ids[0], ids[5]]})),
        )
        .await;
    assert_eq!(
        (body["ok"].as_i64(), body["refused"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        op.act("/api/jobs/bulk", Some(json!({"action": "cancel"})))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    // The page's bulk form, with checked ids.
    let r = op
        .post_form(
            "/jobs/bulk",
            &[
                ("csrf", &op.csrf),
                ("action", "retry"),
                ("scope", "ids"),
                ("id", &ids[2].to_string()),
                ("id", &ids[3].to_string()),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(jobs_state(&db.pool, ids[2]).await, "available");
    assert_eq!(jobs_state(&db.pool, ids[3]).await, "available");

    // Search in the args of live jobs, and keyset pages newest first.
    let found = op.get_json("/api/jobs?q=needle-6").await;
    assert_eq!(found["items"].as_array().unwrap().len(), 1);
    assert_eq!(found["items"][0]["id"], ids[6]);
    let mut seen = Vec::new();
    let mut next = String::new();
    loop {
        let page = op.get_json(&format!("/api/jobs?limit=3{next}")).await;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_i64().unwrap());
        }
        match page["next_before"].as_i64() {
            Some(before) => next = format!("&before={before}"),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    // A search matching every job's args finds the live ones only (2, 3 and 6 are available
    // again or still), newest first, in keyset pages.
    let mut found = Vec::new();
    let mut next = String::new();
    loop {
        let page = op
            .get_json(&format!("/api/jobs?q=needle-&limit=2{next}"))
            .await;
        for item in page["items"].as_array().unwrap() {
            found.push(item["id"].as_i64().unwrap());
        }
        match page["next_before"].as_i64() {
            Some(before) => next = format!("&before={before}"),
            None => break,
        }
    }
    assert_eq!(found, [ids[6], ids[3], ids[2]]);
    // A bulk action on a search acts on what the search finds.
    let (status, body) = op
        .act(
            "/api/jobs/bulk",
            Some(json!({"action": "cancel", "filter": {"q": "needle-", "queue": "bulk"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["ok"].as_i64(), body["refused"].as_i64()),
        (Some(2), Some(0))
    );
    assert_eq!(jobs_state(&db.pool, ids[2]).await, "cancelled");
    assert_eq!(jobs_state(&db.pool, ids[3]).await, "cancelled");
    assert_eq!(jobs_state(&db.pool, ids[6]).await, "available");
}

#[tokio::test]
async fn queue_pause_resume_and_caps_and_operator_caps_survive_a_worker_start() {
    let db = fresh_db().await;
    add_ops(&db.pool).await;
    let d = Dashboard::spawn(db.pool.clone()).await;
    let op = Session::login(&d, "olga").await;
    enqueue(&db.pool, "email", json!({})).await;
    // Built-in defaults apply where no operator set caps.
    worker::app::configure_queues(&db.pool).await.unwrap();
    let queue = |v: &Value| {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == "email")
            .cloned()
            .unwrap()
    };
    assert_eq!(
        queue(&op.get_json("/api/queues").await)["max_per_second"],
        2.0
    );

    let (status, _) = op.act("/api/queues/email/pause", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(queue(&op.get_json("/api/queues").await)["paused"], true);
    let (status, _) = op.act("/api/queues/email/resume", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(queue(&op.get_json("/api/queues").await)["paused"], false);

    let (status, _) = op
        .act(
            "/api/queues/email/limits",
            Some(json!({"max_running": 3, "max_per_second": 0.5})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        op.act("/api/queues/email/limits", Some(json!({"max_running": 0})))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    worker::app::configure_queues(&db.pool).await.unwrap();
    let q = queue(&op.get_json("/api/queues").await);
    assert_eq!(
        (q["max_running"].as_i64(), q["max_per_second"].as_f64()),
        (Some(3), Some(0.5)),
        "the operator's caps survive a worker start"
    );
    // The page's form: empty removes a cap.
    let r = op
        .post_form(
            "/queues/email/limits",
            &[
                ("csrf", &op.csrf),
                ("max_running", ""),
                ("max_per_second", "4"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    worker::app::configure_queues(&db.pool).await.unwrap();
    let q = queue(&op.get_json("/api/queues").await);
    assert_eq!(
        (q["max_running"].as_i64(), q["max_per_second"].as_f64()),
        (None, Some(4.0))
    );
    assert_eq!(audit_results(&db.pool, "queue.limits").await.len(), 3);
}

async fn active_subaccounts(stack: &Stack, org: &str) -> usize {
    let name = format!("org:{org}");
    stack
        .sandbox
        .subaccounts()
        .await
        .into_iter()
        .filter(|a| {
            let v = serde_json::to_value(a).unwrap();
            v["friendly_name"] == name.as_str() && v["status"] == "active"
        })
        .count()
}

async fn saga_id(pool: &PgPool, org: &str) -> i64 {
    sqlx::query_scalar("select id from onboard.onboarding where clerk_org_id = $1")
        .bind(org)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn onboarding_actions_follow_the_saga_state_and_a_step_job_of_a_terminal_saga_is_not_retried()
{
    let stack = Stack::start(StackOptions::default()).await;
    add_ops(&stack.db.pool).await;
    let d = Dashboard::spawn(stack.db.pool.clone()).await;
    let op = Session::login(&d, "olga").await;
    let (org, user) = ("org_dash1", "user_dash1");
    stack.sandbox.register(org, "dash-fail-twilio").await;
    stack
        .deliver_new_org(org, "dash-fail-twilio", user, "owner@dash.test")
        .await;
    stack.wait_saga(org, "compensated").await;
    stack.wait_idle().await;
    let id = saga_id(&stack.db.pool, org).await;

    let detail = op.get_json(&format!("/api/onboardings/{id}")).await;
    assert_eq!(detail["state"], "compensated");
    assert_eq!(
        detail["allowed"],
        json!({"restart": true, "retry": false, "cancel": false})
    );
    let twilio = detail["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "twilio_subaccount")
        .unwrap()
        .clone();
    assert!(
        twilio["last_error"].as_str().unwrap().contains("(20001)"),
        "{twilio}"
    );
    let page = op
        .get(&format!("/onboardings/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("data-action=\"restart\"") && !page.contains("data-action=\"cancel\""));
    assert!(
        page.contains("permanent provider error 400 (20001)"),
        "the Twilio error is shown"
    );

    // Emails are masked in the inbox until an operator reveals them; the reveal is audited.
    let inbox = op.get_json("/api/inbox?type=user.created").await;
    let user_row = &inbox["items"][0];
    let text = user_row["payload"].to_string();
    assert!(
        text.contains("o***@***.test") && !text.contains("owner@dash.test"),
        "{text}"
    );
    let inbox_id = user_row["id"].as_i64().unwrap();
    let page = op.get("/inbox").await.text().await.unwrap();
    assert!(!page.contains("owner@dash.test"));
    let r = op
        .post_form(&format!("/inbox/{inbox_id}/reveal"), &[("csrf", &op.csrf)])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        op.get("/inbox")
            .await
            .text()
            .await
            .unwrap()
            .contains("owner@dash.test")
    );
    op.get_json(&format!("/api/onboardings/{id}?reveal=true"))
        .await;
    let reveals: Vec<String> = audit_results(&stack.db.pool, "reveal")
        .await
        .into_iter()
        .map(|r| format!("{}:{}:{}", r.0, r.1, r.2))
        .collect();
    assert_eq!(
        reveals,
        [
            format!("olga:inbox:{inbox_id}:ok"),
            format!("olga:onboarding:{id}:ok")
        ]
    );

    // Not allowed in this state: 409 with the code.
    for (a, code) in [("retry", "saga_not_retryable"), ("cancel", "saga_terminal")] {
        let (status, body) = op.act(&format!("/api/onboardings/{id}/{a}"), None).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::CONFLICT, &json!(code)),
            "{a}"
        );
    }
    // A step job of this terminal saga cannot be retried.
    let step_job: i64 = sqlx::query_scalar("select id from onboard.job where kind = 'onboarding.twilio_subaccount' and (args->>'onboarding_id')::bigint = $1")
        .bind(id)
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    let (status, body) = op.act(&format!("/api/jobs/{step_job}/retry"), None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::CONFLICT, &json!("saga_terminal")),
        "{body}"
    );
    assert_eq!(
        jobs_state(&stack.db.pool, step_job).await,
        "discarded",
        "nothing changed"
    );
    let page = op
        .get(&format!("/jobs/{step_job}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!("/onboardings/{id}")),
        "the job links its saga"
    );
    assert!(
        !page.contains("data-action=\"retry\""),
        "no retry button on a step of a terminal saga"
    );

    // Heal and restart: it completes.
    stack.sandbox.heal("dash-fail-twilio").await;
    let (status, body) = op
        .act(&format!("/api/onboardings/{id}/restart"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    stack.wait_saga(org, "completed").await;
    let (status, body) = op
        .act(&format!("/api/onboardings/{id}/restart"), None)
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::CONFLICT, &json!("saga_not_restartable"))
    );
    let found = op.get_json(&format!("/api/onboardings?q={org}")).await;
    assert_eq!(found["items"][0]["id"], id);
    let by_org = op.get_json(&format!("/api/jobs?org={org}")).await;
    assert!(by_org["items"].as_array().unwrap().len() >= 5, "{by_org}");
    let audit: Vec<String> = audit_results(&stack.db.pool, "onboarding.restart")
        .await
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(audit, ["ok", "saga_not_restartable"]);
    stack.stop().await;
}

#[tokio::test]
async fn cancelling_a_running_saga_step_job_compensates_its_saga_and_cancel_of_a_running_saga_too()
{
    let stack = Stack::start(StackOptions {
        slow_delay: Duration::from_secs(30),
        client_timeout: Duration::from_secs(40),
        ..Default::default()
    })
    .await;
    add_ops(&stack.db.pool).await;
    let d = Dashboard::spawn(stack.db.pool.clone()).await;
    let op = Session::login(&d, "olga").await;
    let (org, user) = ("org_dash2", "user_dash2");
    stack.sandbox.register(org, "dash2-slow-twilio").await;
    stack
        .deliver_new_org(org, "dash2-slow-twilio", user, "owner2@dash.test")
        .await;
    let step_job: i64 = wait_for("the Twilio step to run", Duration::from_secs(60), || async {
        sqlx::query_scalar("select id from onboard.job where kind = 'onboarding.twilio_subaccount' and state = 'running'")
            .fetch_optional(&stack.db.pool)
            .await
            .unwrap()
    })
    .await;
    let id = saga_id(&stack.db.pool, org).await;
    let (status, body) = op.act(&format!("/api/jobs/{step_job}/cancel"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["onboarding_id"], id);
    stack.wait_saga(org, "compensated").await;
    assert_eq!(jobs_state(&stack.db.pool, step_job).await, "cancelled");
    stack.wait_idle().await;
    // The interrupted call had created the sub-account (the sandbox creates at once): the
    // compensation closed it.
    assert_eq!(
        active_subaccounts(&stack, org).await,
        0,
        "no sub-account leaked"
    );

    // A saga cancelled as a whole, from its page's action.
    let (org3, user3) = ("org_dash3", "user_dash3");
    stack.sandbox.register(org3, "dash3-slow-twilio").await;
    stack
        .deliver_new_org(org3, "dash3-slow-twilio", user3, "owner3@dash.test")
        .await;
    // Its Twilio step in flight holds the saga's lock for 30 s: the cancel stops it first.
    let step_job3: i64 = wait_for("the Twilio step to run", Duration::from_secs(60), || async {
        sqlx::query_scalar(
            "select id from onboard.job where kind = 'onboarding.twilio_subaccount' and state = 'running'",
        )
        .fetch_optional(&stack.db.pool)
        .await
        .unwrap()
    })
    .await;
    let id3 = saga_id(&stack.db.pool, org3).await;
    let r = op
        .post_form(&format!("/onboardings/{id3}/cancel"), &[("csrf", &op.csrf)])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    stack.wait_saga(org3, "compensated").await;
    assert_eq!(jobs_state(&stack.db.pool, step_job3).await, "cancelled");
    stack.wait_idle().await;
    assert_eq!(
        active_subaccounts(&stack, org3).await,
        0,
        "no sub-account leaked"
    );
    stack.stop().await;
}

#[tokio::test]
async fn discarding_a_waiting_saga_step_job_compensates_its_saga() {
    let stack = Stack::start(StackOptions::default()).await;
    add_ops(&stack.db.pool).await;
    let d = Dashboard::spawn(stack.db.pool.clone()).await;
    let op = Session::login(&d, "olga").await;
    let (org, user) = ("org_dash4", "user_dash4");
    stack.sandbox.register(org, "dash4-flaky-twilio").await;
    stack
        .deliver_new_org(org, "dash4-flaky-twilio", user, "owner4@dash.test")
        .await;
    // The Twilio step failed once and waits for its retry (held there for an hour).
    let step_job: i64 = wait_for(
        "the Twilio step to wait for its retry",
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar(
                "update onboard.job set state = 'scheduled', run_at = now() + interval '1 hour'
                  where kind = 'onboarding.twilio_subaccount' and state = 'retryable' returning id",
            )
            .fetch_optional(&stack.db.pool)
            .await
            .unwrap()
        },
    )
    .await;
    let id = saga_id(&stack.db.pool, org).await;
    let page = op
        .get(&format!("/jobs/{step_job}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("data-action=\"discard\"") && page.contains("data-action=\"cancel\""),
        "a waiting step of a running saga can be discarded or cancelled"
    );
    let (status, body) = op.act(&format!("/api/jobs/{step_job}/discard"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "discarded");
    assert_eq!(body["onboarding_id"], id);
    stack.wait_saga(org, "compensated").await;
    // The discard itself failed the step (not the reconciler, later, for a job gone missing).
    let reason: String = sqlx::query_scalar(
        "select last_error from onboard.onboarding_step where onboarding_id = $1 and name = 'twilio_subaccount'",
    )
    .bind(id)
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(reason, format!("job {step_job} discarded by an operator"));
    let (status, body) = op.act(&format!("/api/jobs/{step_job}/discard"), None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::CONFLICT, &json!("job_finished")),
        "{body}"
    );
    stack.stop().await;
}
