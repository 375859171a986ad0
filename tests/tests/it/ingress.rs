//! The ingress over real HTTP on loopback and a real PostgreSQL: every row of DESIGN.md §6,
//! every Clerk fixture, concurrent duplicate deliveries across two instances, secret rotation,
//! a database outage, and the onboarding API's auth, validation and idempotency rules.

use std::time::Duration;

use ingress::send::sign;
use ingress::{AppState, Application, Clock, Running, Settings, WebhookSecrets};
use integration_tests::{TestDb, cluster, fresh_db, wait_for};
use jobs::db::PoolSettings;
use serde_json::{Value, json};
use sqlx::{Connection, PgPool};

const OLD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const PUBLIC_URL: &str = "http://ingress.test";

const DUPLICATES: &str = "onboard_ingress_duplicate_deliveries_total";
const NO_MATCHING_SIGNATURE: &str =
    "onboard_ingress_signature_failures_total{reason=\"no_matching_signature\"}";
const TOO_OLD: &str = "onboard_ingress_signature_failures_total{reason=\"timestamp_too_old\"}";
const IN_FUTURE: &str = "onboard_ingress_signature_failures_total{reason=\"timestamp_in_future\"}";
const WEBHOOK_204: &str =
    "onboard_ingress_requests_total{route=\"/webhooks/clerk\",status=\"204\"}";
const HEALTHZ_200: &str = "onboard_ingress_requests_total{route=\"/healthz\",status=\"200\"}";
const ENQUEUED: &str = "onboard_ingress_enqueue_seconds_count";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/clerk/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn now() -> i64 {
    Clock::system().now()
}

/// One ingress instance with its own pool, on ports chosen by the OS.
struct Ingress {
    running: Running,
    client: reqwest::Client,
}

impl Ingress {
    async fn start(db: &TestDb, secrets: &str) -> Self {
        Self::start_with_clock(db, secrets, Clock::system()).await
    }

    async fn start_with_clock(db: &TestDb, secrets: &str, clock: Clock) -> Self {
        let secrets = WebhookSecrets::parse(&secrets.to_owned().into()).expect("valid secrets");
        let mut settings = Settings::new(secrets);
        settings.ingress_addr = "127.0.0.1:0".parse().unwrap();
        settings.dashboard_addr = Some("127.0.0.1:0".parse().unwrap());
        settings.public_url = PUBLIC_URL.to_owned();
        let pool_settings = PoolSettings {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(1),
            generic_plans: false,
        };
        let pool = jobs::db::connect_lazy(&db.url, &pool_settings).expect("pool");
        let state = AppState::with_clock(pool, &settings, clock);
        let running = Application::bind(state, &settings)
            .await
            .expect("bind")
            .spawn();
        Ingress {
            running,
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.ingress_addr)
    }

    fn internal_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.running.internal_addr.expect("internal listener")
        )
    }

    /// POSTs `body` to the webhook with the given Svix headers (any may be left out).
    async fn post_webhook(
        &self,
        id: Option<&str>,
        ts: Option<i64>,
        signature: Option<&str>,
        body: &[u8],
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url("/webhooks/clerk"))
            .header("content-type", "application/json");
        if let Some(id) = id {
            request = request.header("svix-id", id);
        }
        if let Some(ts) = ts {
            request = request.header("svix-timestamp", ts.to_string());
        }
        if let Some(signature) = signature {
            request = request.header("svix-signature", signature);
        }
        request
            .body(body.to_vec())
            .send()
            .await
            .expect("POST /webhooks/clerk")
    }

    /// Delivers `body` as message `id`, signed with `secret` at `ts`, as Svix would.
    async fn deliver_at(&self, secret: &str, id: &str, ts: i64, body: &[u8]) -> reqwest::Response {
        let signature = sign(secret, id, ts, body).expect("sign");
        self.post_webhook(Some(id), Some(ts), Some(&signature), body)
            .await
    }

    async fn deliver(&self, secret: &str, id: &str, body: &[u8]) -> reqwest::Response {
        self.deliver_at(secret, id, now(), body).await
    }

    async fn metrics(&self) -> String {
        self.client
            .get(self.internal_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one series (`name{labels}`) of the process-wide registry, 0 when absent.
    /// Tests of one process share it, so assertions compare a test's own before and after.
    async fn metric(&self, series: &str) -> u64 {
        series_value(&self.metrics().await, series)
    }
}

/// The value of `series` in a Prometheus text exposition, 0 when absent.
fn series_value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .expect(sql)
}

async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("a JSON error body");
    body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_owned()
}

// ---------------------------------------------------------------------------------------
// POST /webhooks/clerk: DESIGN.md §6, row by row.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_new_delivery_is_answered_204_after_its_inbox_row_and_job_are_committed() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let response = app
        .deliver(
            OLD_SECRET,
            "msg_new_1",
            &fixture("organization.created.json"),
        )
        .await;
    assert_eq!(response.status(), 204);
    assert!(response.headers().contains_key("x-request-id"));

    let (event_type, ignored, ts): (String, bool, i64) = sqlx::query_as(
        "select event_type, ignored, svix_timestamp from onboard.inbox where svix_id = 'msg_new_1'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(event_type, "organization.created");
    assert!(!ignored);
    assert!((ts - now()).abs() < 60);
    // organization.created is a job like every other event; its handler starts the saga.
    let (inbox_id,): (i64,) =
        sqlx::query_as("select id from onboard.inbox where svix_id = 'msg_new_1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let (kind, queue, state, args): (String, String, String, Value) =
        sqlx::query_as("select kind, queue, state::text, args from onboard.job")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (kind.as_str(), queue.as_str(), state.as_str()),
        ("clerk.organization.created", "clerk", "available")
    );
    assert_eq!(args, json!({"inbox_id": inbox_id, "svix_id": "msg_new_1"}));
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.onboarding").await,
        0,
        "the saga is the job's work, not the webhook's"
    );
    app.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_repeated_svix_id_is_answered_204_and_stores_nothing_new() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let duplicates = app.metric(DUPLICATES).await;
    let body = fixture("user.created.json");
    assert_eq!(
        app.deliver(OLD_SECRET, "msg_dup", &body).await.status(),
        204
    );
    // A retry: same id, new timestamp and signature.
    assert_eq!(
        app.deliver_at(OLD_SECRET, "msg_dup", now() - 5, &body)
            .await
            .status(),
        204
    );
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.inbox").await,
        1
    );
    assert_eq!(count(&db.pool, "select count(*) from onboard.job").await, 1);
    assert!(app.metric(DUPLICATES).await > duplicates);
}

#[tokio::test]
async fn a_delivery_missing_any_svix_header_is_a_400_and_stores_nothing() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let body = fixture("user.created.json");
    let ts = now();
    let signature = sign(OLD_SECRET, "msg_h", ts, &body).unwrap();
    for missing in ["svix-id", "svix-timestamp", "svix-signature"] {
        let response = app
            .post_webhook(
                (missing != "svix-id").then_some("msg_h"),
                (missing != "svix-timestamp").then_some(ts),
                (missing != "svix-signature").then_some(signature.as_str()),
                &body,
            )
            .await;
        assert_eq!(response.status(), 400, "without {missing}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "missing_header");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains(missing)
        );
    }
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.inbox").await,
        0
    );
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.rejected_delivery").await,
        0
    );
}

#[tokio::test]
async fn a_bad_signature_is_a_401_and_stores_nothing() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let failures = app.metric(NO_MATCHING_SIGNATURE).await;
    let body = fixture("user.created.json");
    // Signed with a secret we do not have.
    let response = app.deliver(NEW_SECRET, "msg_bad", &body).await;
    assert_eq!(response.status(), 401);
    assert_eq!(error_code(response).await, "invalid_signature");
    // Signed with ours, then the body changed by one byte.
    let ts = now();
    let signature = sign(OLD_SECRET, "msg_bad", ts, &body).unwrap();
    let mut tampered = body.clone();
    tampered.push(b'\n');
    let response = app
        .post_webhook(Some("msg_bad"), Some(ts), Some(&signature), &tampered)
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.inbox").await,
        0
    );
    assert!(app.metric(NO_MATCHING_SIGNATURE).await >= failures + 2);
}

#[tokio::test]
async fn a_timestamp_more_than_five_minutes_off_is_a_401_against_a_pinned_clock() {
    let db = fresh_db().await;
    let pinned = 1_800_000_000;
    let app = Ingress::start_with_clock(&db, OLD_SECRET, Clock::fixed(pinned)).await;
    let too_old = app.metric(TOO_OLD).await;
    let in_future = app.metric(IN_FUTURE).await;
    let body = fixture("user.updated.json");
    for (offset, status) in [(-301, 401), (301, 401), (-300, 204), (300, 204)] {
        let id = format!("msg_ts_{}", offset + 1000);
        let response = app
            .deliver_at(OLD_SECRET, &id, pinned + offset, &body)
            .await;
        assert_eq!(response.status(), status, "offset {offset}");
        if status == 401 {
            assert_eq!(error_code(response).await, "timestamp_out_of_tolerance");
        }
    }
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.inbox").await,
        2
    );
    assert!(app.metric(TOO_OLD).await > too_old);
    assert!(app.metric(IN_FUTURE).await > in_future);
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_and_one_at_the_limit_is_read() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    // Official vector T4's body is exactly 256 KiB: read, verified, then rejected as no envelope.
    let at_limit = "a".repeat(262_144).into_bytes();
    let response = app.deliver(OLD_SECRET, "msg_at_limit", &at_limit).await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "invalid_event");
    let over = "a".repeat(262_145).into_bytes();
    let response = app.deliver(OLD_SECRET, "msg_over_limit", &over).await;
    assert_eq!(response.status(), 413);
    assert_eq!(error_code(response).await, "payload_too_large");
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.inbox").await,
        0
    );
}

#[tokio::test]
async fn a_signed_body_that_is_not_a_clerk_envelope_is_a_400_recorded_as_rejected() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let body = br#"{"hello": "world"}"#;
    for _ in 0..2 {
        let response = app.deliver(OLD_SECRET, "msg_not_clerk", body).await;
        assert_eq!(response.status(), 400);
        assert_eq!(error_code(response).await, "invalid_event");
    }
    let (reason, stored, attempts): (String, Vec<u8>, i32) =
        sqlx::query_as("select reason, body, attempts from onboard.rejected_delivery where svix_id = 'msg_not_clerk'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(reason.contains("type"), "{reason}");
    assert_eq!(stored, body);
    assert_eq!(attempts, 2);
    // A body jsonb cannot hold is rejected the same way, never a 5xx loop.
    let nul = br#"{"type":"user.created","data":{"first_name":"a\u0000b"}}"#;
    assert_eq!(app.deliver(OLD_SECRET, "msg_nul", nul).await.status(), 400);
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.rejected_delivery").await,
        2
    );
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.inbox").await,
        0
    );
    assert_eq!(count(&db.pool, "select count(*) from onboard.job").await, 0);
}

#[tokio::test]
async fn every_clerk_fixture_is_stored_and_routed_to_its_job_kind() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let dir = format!("{}/fixtures/clerk", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() >= 13, "{names:?}");
    for (i, name) in names.iter().enumerate() {
        let event_type = name.trim_end_matches(".json");
        let id = format!("msg_fixture_{i}");
        let response = app.deliver(OLD_SECRET, &id, &fixture(name)).await;
        assert_eq!(response.status(), 204, "{name}");
        let (stored_type, ignored, payload): (String, bool, Value) = sqlx::query_as(
            "select event_type, ignored, payload from onboard.inbox where svix_id = $1",
        )
        .bind(&id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(stored_type, event_type);
        assert_eq!(
            payload,
            serde_json::from_slice::<Value>(&fixture(name)).unwrap(),
            "{name} stored as sent"
        );
        let expected_kind = match event_type {
            "session.created" => None,
            other => Some(format!("clerk.{other}")),
        };
        let kinds: Vec<String> =
            sqlx::query_scalar("select kind from onboard.job j where j.args->>'svix_id' = $1")
                .bind(&id)
                .fetch_all(&db.pool)
                .await
                .unwrap();
        assert_eq!(
            kinds,
            expected_kind.into_iter().collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(ignored, event_type == "session.created", "{name}");
    }
    let queues: Vec<(String, i64)> =
        sqlx::query_as("select queue, count(*) from onboard.job group by queue order by queue")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(queues, [("clerk".to_owned(), 12)]);
}

#[tokio::test]
async fn an_unknown_event_type_is_stored_as_ignored_and_answered_204() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let body = br#"{"type":"subscriptionItem.freeTrialEnding","object":"event","data":{"id":"x"},"new_field":[1]}"#;
    assert_eq!(
        app.deliver(OLD_SECRET, "msg_unknown", body).await.status(),
        204
    );
    let ignored: bool =
        sqlx::query_scalar("select ignored from onboard.inbox where svix_id = 'msg_unknown'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(ignored);
    assert_eq!(count(&db.pool, "select count(*) from onboard.job").await, 0);
}

#[tokio::test]
async fn twenty_concurrent_deliveries_of_one_svix_id_on_two_instances_leave_one_row_and_one_job() {
    let db = fresh_db().await;
    let first = Ingress::start(&db, OLD_SECRET).await;
    let second = Ingress::start(&db, OLD_SECRET).await;
    assert_ne!(first.running.ingress_addr, second.running.ingress_addr);
    let duplicates = first.metric(DUPLICATES).await;
    for (id, name) in [
        ("msg_race_org", "organization.created.json"),
        ("msg_race_user", "user.created.json"),
    ] {
        let body = fixture(name);
        let deliveries = (0..20).map(|i| {
            let app = if i % 2 == 0 { &first } else { &second };
            let body = &body;
            async move {
                app.deliver_at(OLD_SECRET, id, now() - i64::from(i), body)
                    .await
                    .status()
                    .as_u16()
            }
        });
        let statuses = futures::future::join_all(deliveries).await;
        assert!(statuses.iter().all(|s| *s == 204), "{statuses:?}");
        let rows = count(
            &db.pool,
            &format!("select count(*) from onboard.inbox where svix_id = '{id}'"),
        )
        .await;
        assert_eq!(rows, 1, "{name}");
    }
    assert_eq!(count(&db.pool, "select count(*) from onboard.job").await, 2);
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from onboard.job where queue = 'clerk' and kind in \
             ('clerk.organization.created', 'clerk.user.created')"
        )
        .await,
        2
    );
    // Both instances record into this process's one registry.
    assert!(first.metric(DUPLICATES).await >= duplicates + 38);
}

const CHILD_DATABASE_URL: &str = "ONBOARD_TEST_INGRESS_CHILD_DATABASE_URL";

/// Not a test on its own: the ingress process that the two-process test starts (twice) by
/// running this test binary again. It serves until its stdin closes.
#[tokio::test]
#[ignore = "run as a child process by twenty_concurrent_deliveries_over_two_ingress_processes_…"]
async fn ingress_child_process() {
    let Ok(url) = std::env::var(CHILD_DATABASE_URL) else {
        return;
    };
    let pool = sqlx::PgPool::connect_lazy(&url).unwrap();
    let db = TestDb { url, pool };
    let app = Ingress::start(&db, OLD_SECRET).await;
    println!("INGRESS_LISTENING {}", app.running.ingress_addr);
    let _ = tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut rest = Vec::new();
        std::io::stdin().read_to_end(&mut rest)
    })
    .await;
    app.running.shutdown().await.unwrap();
}

/// Starts this test binary again as an ingress process on `db`; returns it and its address.
async fn spawn_ingress_process(db: &TestDb) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "ingress::ingress_child_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DATABASE_URL, &db.url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start an ingress process");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // libtest may print the test's name on the same line first.
            if let Some((_, addr)) = line.split_once("INGRESS_LISTENING ") {
                return addr.trim().to_owned();
            }
        }
        panic!("the ingress process exited before listening");
    })
    .await
    .expect("the ingress process to listen");
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

#[tokio::test]
async fn twenty_concurrent_deliveries_over_two_ingress_processes_leave_one_row_and_one_job() {
    let db = fresh_db().await;
    let (mut first, first_addr) = spawn_ingress_process(&db).await;
    let (mut second, second_addr) = spawn_ingress_process(&db).await;
    let client = reqwest::Client::new();
    let body = fixture("organization.created.json");
    let deliveries = (0..20).map(|i| {
        let url = format!(
            "http://{}/webhooks/clerk",
            if i % 2 == 0 {
                &first_addr
            } else {
                &second_addr
            }
        );
        let (client, body) = (&client, &body);
        async move {
            let ts = now() - i64::from(i);
            client
                .post(url)
                .header("svix-id", "msg_two_processes")
                .header("svix-timestamp", ts.to_string())
                .header(
                    "svix-signature",
                    sign(OLD_SECRET, "msg_two_processes", ts, body).unwrap(),
                )
                .body(body.clone())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures::future::join_all(deliveries).await;
    assert!(statuses.iter().all(|s| *s == 204), "{statuses:?}");
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.inbox").await,
        1
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from onboard.job where kind = 'clerk.organization.created'"
        )
        .await,
        1
    );
    for child in [&mut first, &mut second] {
        drop(child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success());
    }
}

#[tokio::test]
async fn during_rotation_old_and_new_secrets_verify_and_a_removed_one_does_not() {
    let db = fresh_db().await;
    let body = fixture("organizationMembership.created.json");
    let rotating = Ingress::start(&db, &format!("{OLD_SECRET} {NEW_SECRET}")).await;
    assert_eq!(
        rotating
            .deliver(OLD_SECRET, "msg_rot_old", &body)
            .await
            .status(),
        204
    );
    assert_eq!(
        rotating
            .deliver(NEW_SECRET, "msg_rot_new", &body)
            .await
            .status(),
        204
    );
    // Svix dual-signs during the grace window: both entries in one header.
    let ts = now();
    let both = format!(
        "{} {}",
        sign(OLD_SECRET, "msg_rot_both", ts, &body).unwrap(),
        sign(NEW_SECRET, "msg_rot_both", ts, &body).unwrap()
    );
    assert_eq!(
        rotating
            .post_webhook(Some("msg_rot_both"), Some(ts), Some(&both), &body)
            .await
            .status(),
        204
    );
    rotating.running.shutdown().await.unwrap();

    let rotated = Ingress::start(&db, NEW_SECRET).await;
    assert_eq!(
        rotated
            .deliver(OLD_SECRET, "msg_rot_removed", &body)
            .await
            .status(),
        401
    );
    assert_eq!(
        rotated
            .deliver(NEW_SECRET, "msg_rot_after", &body)
            .await
            .status(),
        204
    );
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.inbox").await,
        4
    );
}

fn database_name(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_owned()
}

/// Refuses new connections to the test's database and ends the open ones, or lets them in again.
async fn set_database_available(db: &TestDb, available: bool) {
    let admin = sqlx::PgPool::connect(&cluster().url("postgres"))
        .await
        .unwrap();
    let name = database_name(&db.url);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "alter database {name} allow_connections {available}"
    )))
    .execute(&admin)
    .await
    .unwrap();
    if !available {
        sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()")
            .bind(&name)
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
}

#[tokio::test]
async fn with_the_database_down_a_delivery_gets_503_and_succeeds_once_it_returns() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let body = fixture("organization.created.json");
    // Warm the pool so the outage also hits already-open connections.
    assert_eq!(
        app.deliver(OLD_SECRET, "msg_before", &fixture("user.created.json"))
            .await
            .status(),
        204
    );

    set_database_available(&db, false).await;
    let response = app.deliver(OLD_SECRET, "msg_outage", &body).await;
    assert_eq!(response.status(), 503);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unavailable");
    assert!(
        !error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("database"),
        "5xx bodies are opaque"
    );
    let ready = app
        .client
        .get(app.internal_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    set_database_available(&db, true).await;
    // Svix retries the same message: once the database is back it is stored.
    let status = wait_for(
        "the ingress to recover",
        Duration::from_secs(30),
        || async {
            let status = app.deliver(OLD_SECRET, "msg_outage", &body).await.status();
            (status == 204).then_some(status)
        },
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from onboard.inbox where svix_id = 'msg_outage'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from onboard.job where kind = 'clerk.organization.created'"
        )
        .await,
        1
    );
    assert_eq!(
        app.client
            .get(app.internal_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn a_database_that_never_answers_gives_503_with_retry_after() {
    // A "database" that accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let mut settings = Settings::new(WebhookSecrets::parse(&OLD_SECRET.to_owned().into()).unwrap());
    settings.ingress_addr = "127.0.0.1:0".parse().unwrap();
    settings.dashboard_addr = None;
    // The production pool settings: 2 s to acquire; the request deadline (1.5 s) answers first.
    let pool = jobs::db::connect_lazy(
        &format!("postgres://postgres@127.0.0.1:{port}/x"),
        &PoolSettings::default(),
    )
    .unwrap();
    let running = ingress::spawn(pool, &settings).await.unwrap();
    let body = fixture("user.created.json");
    let ts = now();
    let response = reqwest::Client::new()
        .post(format!("http://{}/webhooks/clerk", running.ingress_addr))
        .header("svix-id", "msg_silent")
        .header("svix-timestamp", ts.to_string())
        .header(
            "svix-signature",
            sign(OLD_SECRET, "msg_silent", ts, &body).unwrap(),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    running.shutdown().await.unwrap();
    hold.abort();
}

#[tokio::test]
async fn a_stored_delivery_wakes_the_queue_listeners() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let mut listener = job_channel(&db.url).await;
    assert_eq!(
        app.deliver(OLD_SECRET, "msg_wake_1", &fixture("user.created.json"))
            .await
            .status(),
        204
    );
    let first = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.payload(), "clerk");
    assert_eq!(
        app.deliver(
            OLD_SECRET,
            "msg_wake_2",
            &fixture("organization.created.json")
        )
        .await
        .status(),
        204
    );
    let second = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .unwrap()
        .unwrap();
    // organization.created's job is on the clerk queue too.
    assert_eq!(second.payload(), "clerk");
    // Both wake-ups came from the ingress's coalescer, not from the enqueue's trigger.
    let metrics = app.metrics().await;
    let sent = series_value(
        &metrics,
        "onboard_queue_wakeup_rounds_total{outcome=\"sent\"}",
    );
    assert!(sent >= 1, "{metrics}");
}

// ---------------------------------------------------------------------------------------
// Listeners.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_internal_listener_serves_health_readiness_and_metrics_and_the_public_one_only_health()
{
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let webhook_204 = app.metric(WEBHOOK_204).await;
    let healthz_200 = app.metric(HEALTHZ_200).await;
    let enqueued = app.metric(ENQUEUED).await;
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        app.client
            .get(app.internal_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.client
            .get(app.internal_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.deliver(OLD_SECRET, "msg_m", &fixture("user.deleted.json"))
        .await;
    let response = app
        .client
        .get(app.internal_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    assert!(series_value(&text, WEBHOOK_204) > webhook_204, "{text}");
    assert!(series_value(&text, HEALTHZ_200) > healthz_200, "{text}");
    assert!(series_value(&text, ENQUEUED) > enqueued, "{text}");
    assert!(
        text.contains("# TYPE onboard_ingress_enqueue_seconds histogram"),
        "{text}"
    );
    let echoed = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "req-123");
}

// ---------------------------------------------------------------------------------------
// The onboarding API.
// ---------------------------------------------------------------------------------------

fn onboarding_body(org: &str) -> Value {
    json!({
        "org_id": org,
        "name": "Acme Corp",
        "slug": "acme-corp",
        "creator_user_id": "user_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
        "creator_email": "ada@example.com",
        "creator_first_name": "Ada"
    })
}

async fn api_key(db: &TestDb, name: &str) -> String {
    use secrecy::ExposeSecret;
    let (_, key) = onboarding::api_key::create(&db.pool, name)
        .await
        .expect("create API key");
    key.expose_secret().to_owned()
}

impl Ingress {
    async fn post_onboarding(
        &self,
        key: Option<&str>,
        idempotency_key: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url("/v1/onboarding")).json(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(idempotency_key) = idempotency_key {
            request = request.header("idempotency-key", idempotency_key);
        }
        request.send().await.expect("POST /v1/onboarding")
    }
}

#[tokio::test]
async fn the_onboarding_api_answers_401_without_a_key_with_a_wrong_one_and_with_a_revoked_one() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let key = api_key(&db, "server").await;
    let body = onboarding_body("org_auth");
    let response = app.post_onboarding(None, Some("k1"), &body).await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let mut wrong = key.clone();
    wrong.replace_range(key.len() - 1.., if key.ends_with('0') { "1" } else { "0" });
    assert_eq!(
        app.post_onboarding(Some(&wrong), Some("k1"), &body)
            .await
            .status(),
        401
    );
    assert_eq!(
        app.post_onboarding(Some("not-a-key"), Some("k1"), &body)
            .await
            .status(),
        401
    );
    assert_eq!(
        app.post_onboarding(Some(&key), Some("k1"), &body)
            .await
            .status(),
        202
    );

    assert_eq!(
        onboarding::api_key::revoke(&db.pool, "server")
            .await
            .unwrap(),
        1
    );
    let response = app.post_onboarding(Some(&key), Some("k2"), &body).await;
    assert_eq!(response.status(), 401);
    assert_eq!(error_code(response).await, "unauthorized");
    let get = app
        .client
        .get(app.url("/v1/onboarding?org_id=org_auth"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 401);
    // Revoking by id works too, and the name can be reused.
    let (id, _) = onboarding::api_key::create(&db.pool, "server")
        .await
        .unwrap();
    assert_eq!(
        onboarding::api_key::revoke(&db.pool, &id.to_string())
            .await
            .unwrap(),
        1
    );
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("select key_hash from onboard.api_key")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|h| h.len() == 32 && !key.as_bytes().windows(h.len()).any(|w| w == h.as_slice()))
    );
}

#[tokio::test]
async fn the_onboarding_api_requires_an_idempotency_key() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let key = api_key(&db, "server").await;
    let response = app
        .post_onboarding(Some(&key), None, &onboarding_body("org_x"))
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "missing_idempotency_key");
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.onboarding").await,
        0
    );
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_get_the_original_response_and_start_once() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let key = api_key(&db, "server").await;
    let body = onboarding_body("org_idem");
    let first = app.post_onboarding(Some(&key), Some("idem-1"), &body).await;
    assert_eq!(first.status(), 202);
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    let first: Value = first.json().await.unwrap();
    let id = first["id"].as_i64().unwrap();
    assert_eq!(
        first["status_url"],
        format!("{PUBLIC_URL}/v1/onboarding/{id}")
    );
    assert_eq!(location, first["status_url"].as_str().unwrap());

    let again = app.post_onboarding(Some(&key), Some("idem-1"), &body).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.onboarding").await,
        1
    );
    assert_eq!(count(&db.pool, "select count(*) from onboard.job").await, 1);
    let source: String = sqlx::query_scalar("select source from onboard.onboarding")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(source, "api");
}

#[tokio::test]
async fn the_same_idempotency_key_with_another_body_is_a_422() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let key = api_key(&db, "server").await;
    assert_eq!(
        app.post_onboarding(Some(&key), Some("idem-2"), &onboarding_body("org_a"))
            .await
            .status(),
        202
    );
    let response = app
        .post_onboarding(Some(&key), Some("idem-2"), &onboarding_body("org_b"))
        .await;
    assert_eq!(response.status(), 422);
    assert_eq!(error_code(response).await, "idempotency_key_reused");
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.onboarding").await,
        1
    );
}

#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_all_get_the_first_response() {
    let db = fresh_db().await;
    let first = Ingress::start(&db, OLD_SECRET).await;
    let second = Ingress::start(&db, OLD_SECRET).await;
    let key = api_key(&db, "server").await;
    let body = onboarding_body("org_concurrent");
    let requests = (0..10).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        let (key, body) = (&key, &body);
        async move {
            let response = app
                .post_onboarding(Some(key), Some("idem-concurrent"), body)
                .await;
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    });
    let answers = futures::future::join_all(requests).await;
    assert!(
        answers.iter().all(|(status, _)| *status == 202),
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|(_, body)| *body == answers[0].1),
        "{answers:?}"
    );
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.onboarding").await,
        1
    );
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.api_idempotency").await,
        1
    );
    assert_eq!(count(&db.pool, "select count(*) from onboard.job").await, 1);
}

#[tokio::test]
async fn an_invalid_onboarding_body_is_a_422_naming_each_bad_field() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let key = api_key(&db, "server").await;
    let body = json!({"org_id": "acme", "name": "", "slug": "Acme Corp", "creator_email": "nope", "colour": "red"});
    let response = app
        .post_onboarding(Some(&key), Some("idem-bad"), &body)
        .await;
    assert_eq!(response.status(), 422);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_request");
    let mut fields: Vec<&str> = error["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "colour",
            "creator_email",
            "creator_user_id",
            "name",
            "org_id",
            "slug"
        ]
    );
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("org_id") && message.contains("slug"),
        "{message}"
    );
    // Not JSON at all.
    let response = app
        .client
        .post(app.url("/v1/onboarding"))
        .bearer_auth(&key)
        .header("idempotency-key", "idem-bad-2")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    // A refused request does not use up its idempotency key.
    let response = app
        .post_onboarding(Some(&key), Some("idem-bad"), &onboarding_body("org_fixed"))
        .await;
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn a_started_onboarding_reads_back_by_id_and_by_organization() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let key = api_key(&db, "server").await;
    let created: Value = app
        .post_onboarding(Some(&key), Some("idem-read"), &onboarding_body("org_read"))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().unwrap();
    let expected = json!({
        "id": id,
        "org_id": "org_read",
        "state": "running",
        "steps": [
            {"name": "create_org_record", "state": "pending", "attempts": 0, "last_error": null},
            {"name": "default_permissions", "state": "pending", "attempts": 0, "last_error": null},
            {"name": "twilio_subaccount", "state": "pending", "attempts": 0, "last_error": null},
            {"name": "welcome_email", "state": "pending", "attempts": 0, "last_error": null}
        ]
    });
    let get = |path: String| {
        let request = app.client.get(app.url(&path)).bearer_auth(&key);
        async move { request.send().await.unwrap() }
    };
    let by_id = get(format!("/v1/onboarding/{id}")).await;
    assert_eq!(by_id.status(), 200);
    assert_eq!(by_id.json::<Value>().await.unwrap(), expected);
    let by_org = get("/v1/onboarding?org_id=org_read".to_owned()).await;
    assert_eq!(by_org.json::<Value>().await.unwrap(), expected);
    assert_eq!(
        get(format!("/v1/onboarding/{}", id + 1)).await.status(),
        404
    );
    assert_eq!(get("/v1/onboarding/abc".to_owned()).await.status(), 404);
    assert_eq!(
        get("/v1/onboarding?org_id=org_nobody".to_owned())
            .await
            .status(),
        404
    );
    assert_eq!(get("/v1/onboarding".to_owned()).await.status(), 422);
    assert_eq!(
        get("/v1/onboarding?org_id=nope".to_owned()).await.status(),
        422
    );
}

#[tokio::test]
async fn the_webhook_and_the_api_share_one_saga_per_organization() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let key = api_key(&db, "server").await;
    assert_eq!(
        app.deliver(OLD_SECRET, "msg_org", &fixture("organization.created.json"))
            .await
            .status(),
        204
    );
    // What the worker's `clerk.organization.created` job does.
    let started = start_from_delivery(&db, "msg_org").await;
    assert!(started.created);
    let saga = started.onboarding_id;
    let response = app
        .post_onboarding(
            Some(&key),
            Some("idem-shared"),
            &onboarding_body("org_2g7np7Hrk0SN6kj5EDMLDaKNL0S"),
        )
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.json::<Value>().await.unwrap()["id"], saga);
    // And the other way round: the API first, then Clerk's event for the same organization.
    let other: Value = app
        .post_onboarding(
            Some(&key),
            Some("idem-first"),
            &onboarding_body("org_api_first"),
        )
        .await
        .json()
        .await
        .unwrap();
    let event = String::from_utf8(fixture("organization.created.json"))
        .unwrap()
        .replace("org_2g7np7Hrk0SN6kj5EDMLDaKNL0S", "org_api_first");
    assert_eq!(
        app.deliver(OLD_SECRET, "msg_org_late", event.as_bytes())
            .await
            .status(),
        204
    );
    let late = start_from_delivery(&db, "msg_org_late").await;
    assert_eq!(late.onboarding_id, other["id"].as_i64().unwrap());
    assert!(
        !late.created,
        "the API's saga is the organization's only one"
    );
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.onboarding").await,
        2
    );
    // Per organization: the webhook's job and the saga's first step.
    let kinds: Vec<(String, i64)> =
        sqlx::query_as("select kind, count(*) from onboard.job group by kind order by kind")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        kinds,
        [
            ("clerk.organization.created".to_owned(), 2),
            ("onboarding.create_org_record".to_owned(), 2)
        ]
    );
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.inbox").await,
        2
    );
    let api_saga: String =
        sqlx::query_scalar("select source from onboard.onboarding where id = $1")
            .bind(other["id"].as_i64().unwrap())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(api_saga, "api");
}

#[tokio::test]
async fn onboard_send_signs_a_file_that_the_ingress_accepts() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, ingress::DEV_WEBHOOK_SECRET).await;
    let url = app.url("/webhooks/clerk");
    let body = fixture("organization.created.json");
    let (status, _) = ingress::send::send_event(
        &url,
        ingress::DEV_WEBHOOK_SECRET,
        &body,
        Some("msg_send".into()),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 204);
    let (status, _) =
        ingress::send::send_event(&url, ingress::DEV_WEBHOOK_SECRET, &body, None, None)
            .await
            .unwrap();
    assert_eq!(status, 204);
    let (status, text) = ingress::send::send_event(
        &url,
        ingress::DEV_WEBHOOK_SECRET,
        &body,
        None,
        Some(now() - 3600),
    )
    .await
    .unwrap();
    assert_eq!(status, 401, "{text}");
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.inbox").await,
        2
    );
}

// ---------------------------------------------------------------------------------------
// organization.created: a job on the clerk queue whose handler starts the saga.
// ---------------------------------------------------------------------------------------

/// Runs the start path of the `clerk.organization.created` job for the delivery `svix_id`, as
/// the worker's handler does (in a transaction of its own).
async fn start_from_delivery(db: &TestDb, svix_id: &str) -> onboarding::start::Started {
    let inbox_id: i64 = sqlx::query_scalar("select id from onboard.inbox where svix_id = $1")
        .bind(svix_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let started = onboarding::start::start_from_inbox(&mut tx, inbox_id)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    started
}

#[tokio::test]
async fn an_organization_created_without_an_organization_id_is_a_400_recorded_as_rejected() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    for (id, body) in [
        (
            "msg_org_user_id",
            &br#"{"type":"organization.created","object":"event","data":{"id":"user_1"}}"#[..],
        ),
        (
            "msg_org_no_id",
            br#"{"type":"organization.created","object":"event","data":{"name":"x"}}"#,
        ),
    ] {
        let response = app.deliver(OLD_SECRET, id, body).await;
        assert_eq!(response.status(), 400, "{id}");
        assert_eq!(error_code(response).await, "invalid_event");
    }
    let reasons: Vec<String> =
        sqlx::query_scalar("select reason from onboard.rejected_delivery order by svix_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(reasons.len(), 2);
    assert!(reasons.iter().all(|r| r.contains("data.id")), "{reasons:?}");
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.inbox").await,
        0
    );
    assert_eq!(count(&db.pool, "select count(*) from onboard.job").await, 0);
}

#[tokio::test]
async fn the_organization_created_job_starts_one_saga_from_the_stored_delivery() {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    assert_eq!(
        app.deliver(
            OLD_SECRET,
            "msg_start",
            &fixture("organization.created.json")
        )
        .await
        .status(),
        204
    );
    let inbox_id: i64 =
        sqlx::query_scalar("select id from onboard.inbox where svix_id = 'msg_start'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let started = start_from_delivery(&db, "msg_start").await;
    assert!(started.created);
    let saga_id = started.onboarding_id;
    let (org, state, source, saga_inbox, request): (String, String, String, Option<i64>, Value) =
        sqlx::query_as(
            "select clerk_org_id, state, source, inbox_id, request from onboard.onboarding",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        (org.as_str(), state.as_str(), source.as_str(), saga_inbox),
        (
            "org_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
            "running",
            "webhook",
            Some(inbox_id)
        )
    );
    assert_eq!(request["org_id"], "org_2g7np7Hrk0SN6kj5EDMLDaKNL0S");
    let steps: Vec<(String, String)> = sqlx::query_as(
        "select name, state from onboard.onboarding_step where onboarding_id = $1 order by position",
    )
    .bind(saga_id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let names: Vec<_> = steps
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("create_org_record", "pending"),
            ("default_permissions", "pending"),
            ("twilio_subaccount", "pending"),
            ("welcome_email", "pending")
        ]
    );
    let (queue, key, args): (String, String, Value) = sqlx::query_as(
        "select queue, unique_key, args from onboard.job where kind = 'onboarding.create_org_record'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(queue, "onboarding");
    assert_eq!(key, format!("onboarding:{saga_id}:create_org_record"));
    assert_eq!(args, json!({"onboarding_id": saga_id, "run": 1}));

    // A second run (a retried job, a replayed delivery of another svix-id) finds the saga.
    let again = start_from_delivery(&db, "msg_start").await;
    assert_eq!(
        again,
        onboarding::start::Started {
            onboarding_id: saga_id,
            created: false
        }
    );
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.onboarding_step").await,
        4
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from onboard.job where kind = 'onboarding.create_org_record'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn starting_from_a_missing_foreign_or_unparsable_inbox_row_is_a_permanent_error() {
    use onboarding::start::{InboxStartError, start_from_inbox};
    let db = fresh_db().await;
    let stored = |svix_id: &'static str, event_type: &'static str, payload: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "insert into onboard.inbox (svix_id, event_type, payload, svix_timestamp, svix_signature)
                 values ($1, $2, $3::jsonb, 0, 'v1,x') returning id",
            )
            .bind(svix_id)
            .bind(event_type)
            .bind(payload)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let updated = stored(
        "msg_u",
        "organization.updated",
        r#"{"type":"organization.updated","data":{"id":"org_1"}}"#,
    )
    .await;
    let broken = stored(
        "msg_b",
        "organization.created",
        r#"{"type":"organization.created","data":{"id":"user_1"}}"#,
    )
    .await;
    let mut conn = db.pool.acquire().await.unwrap();
    let missing = start_from_inbox(&mut conn, broken + 1000)
        .await
        .unwrap_err();
    assert!(
        matches!(missing, InboxStartError::MissingInbox(id) if id == broken + 1000),
        "{missing}"
    );
    let foreign = start_from_inbox(&mut conn, updated).await.unwrap_err();
    assert!(
        matches!(foreign, InboxStartError::NotOrganizationCreated { .. }),
        "{foreign}"
    );
    let unparsable = start_from_inbox(&mut conn, broken).await.unwrap_err();
    assert!(
        matches!(unparsable, InboxStartError::Payload { inbox_id, .. } if inbox_id == broken),
        "{unparsable}"
    );
    for error in [&missing, &foreign, &unparsable] {
        assert!(error.is_permanent(), "{error}");
    }
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.onboarding").await,
        0
    );
}

/// A worker serving only the saga's job kinds (and the `clerk` queue, for the job that starts
/// the saga), with provider clients pointing at a sandbox.
async fn spawn_saga_worker(
    db: &TestDb,
) -> (
    sandbox::Sandbox,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let sandbox = sandbox::spawn("127.0.0.1:0".parse().unwrap(), Default::default())
        .await
        .expect("sandbox");
    let providers = integration_tests::stack::provider_settings(
        &sandbox.base_url(),
        Duration::from_millis(700),
    )
    .providers()
    .unwrap();
    let registry = worker::saga::register(
        worker::runtime::Registry::default(),
        db.pool.clone(),
        std::sync::Arc::new(providers),
    )
    .queue(jobs::QueueConfig::new(onboarding::inbox::QUEUE));
    let mut settings = worker::runtime::WorkerSettings::default();
    settings.maintenance.every = Duration::from_millis(100);
    settings.shutdown_deadline = Duration::from_secs(10);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let pool = db.pool.clone();
    let handle = tokio::spawn(async move {
        worker::runtime::run(pool, registry, settings, async move {
            let _ = stopped.await;
        })
        .await
    });
    (sandbox, stop, handle)
}

#[tokio::test]
async fn the_worker_runs_the_organization_created_job_into_a_saga_and_discards_a_job_without_its_delivery()
 {
    let db = fresh_db().await;
    let app = Ingress::start(&db, OLD_SECRET).await;
    let (_sandbox, stop, worker) = spawn_saga_worker(&db).await;
    assert_eq!(
        app.deliver(
            OLD_SECRET,
            "msg_worker",
            &fixture("organization.created.json")
        )
        .await
        .status(),
        204
    );
    let job_id: i64 =
        sqlx::query_scalar("select id from onboard.job where kind = 'clerk.organization.created'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    wait_for(
        "the clerk.organization.created job to complete",
        Duration::from_secs(30),
        || async {
            (integration_tests::job_state(&db.pool, job_id).await == "completed").then_some(())
        },
    )
    .await;
    let (saga_inbox, source): (Option<i64>, String) = sqlx::query_as(
        "select inbox_id, source from onboard.onboarding where clerk_org_id = 'org_2g7np7Hrk0SN6kj5EDMLDaKNL0S'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let inbox_id: i64 =
        sqlx::query_scalar("select id from onboard.inbox where svix_id = 'msg_worker'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((saga_inbox, source.as_str()), (Some(inbox_id), "webhook"));

    // A job whose delivery is gone cannot ever start a saga: discarded at its first attempt.
    let mut conn = db.pool.acquire().await.unwrap();
    let orphan = jobs::enqueue(
        &mut conn,
        &jobs::NewJob::new(
            onboarding::inbox::ORGANIZATION_CREATED_KIND,
            json!({"inbox_id": inbox_id + 1000, "svix_id": "msg_gone"}),
        )
        .queue(onboarding::inbox::QUEUE),
    )
    .await
    .unwrap()
    .id;
    drop(conn);
    wait_for(
        "the orphan job to be discarded",
        Duration::from_secs(30),
        || async {
            (integration_tests::job_state(&db.pool, orphan).await == "discarded").then_some(())
        },
    )
    .await;
    let (attempt, errors): (i32, Vec<Value>) =
        sqlx::query_as("select attempt, errors from onboard.job where id = $1")
            .bind(orphan)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(attempt, 1);
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{errors:?}"
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
}

// ---------------------------------------------------------------------------------------
// Wake-ups: the inbox statement does not NOTIFY; the coalescer does, sparingly.
// ---------------------------------------------------------------------------------------

/// A listener on the workers' wake-up channel (`onboard_job`).
async fn job_channel(url: &str) -> sqlx::postgres::PgListener {
    let mut listener = sqlx::postgres::PgListener::connect(url).await.unwrap();
    listener.listen("onboard_job").await.unwrap();
    listener
}

/// The next notification on `listener`, within a deadline.
async fn next_notification(listener: &mut sqlx::postgres::PgListener) -> String {
    tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within 10 s")
        .expect("the listener's connection")
        .payload()
        .to_owned()
}

/// Sends a marker notification in a transaction of its own. Notifications reach a listener in
/// commit order, so anything a listener receives before the marker was committed before it:
/// receiving the marker first proves that earlier commits sent nothing.
async fn marker(pool: &PgPool, payload: &str) {
    sqlx::query("select pg_notify('onboard_job', $1)")
        .bind(payload)
        .execute(pool)
        .await
        .unwrap();
}

fn entry<'a>(
    svix_id: &'a onboarding::SvixId,
    body: &'a str,
    envelope: &'a onboarding::inbox::ClerkEnvelope,
) -> onboarding::inbox::InboxEntry<'a> {
    onboarding::inbox::InboxEntry {
        svix_id,
        svix_timestamp: now(),
        svix_signature: "v1,x",
        payload: body,
        envelope,
    }
}

#[tokio::test]
async fn the_inbox_statement_sends_no_notify_and_an_enqueue_in_its_transaction_does() {
    use onboarding::SvixId;
    use onboarding::inbox::{ClerkEnvelope, receive};
    let db = fresh_db().await;
    let mut listener = job_channel(&db.url).await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let routed = String::from_utf8(fixture("user.created.json")).unwrap();
    let routed_envelope = ClerkEnvelope::parse(routed.as_bytes()).unwrap();
    let ignored = String::from_utf8(fixture("session.created.json")).unwrap();
    let ignored_envelope = ClerkEnvelope::parse(ignored.as_bytes()).unwrap();

    // Alone (autocommit): an inbox row and its job, and no NOTIFY.
    let id = SvixId::parse("msg_quiet_1").unwrap();
    let received = receive(&mut conn, entry(&id, &routed, &routed_envelope))
        .await
        .unwrap();
    assert!(received.job_id.is_some());
    assert_eq!(received.queue_to_wake(), Some("clerk"));
    marker(&db.pool, "marker-1").await;
    assert_eq!(next_notification(&mut listener).await, "marker-1");

    // The same session's next enqueue notifies.
    jobs::enqueue(
        &mut conn,
        &jobs::NewJob::new("t.a", json!({})).queue("after"),
    )
    .await
    .unwrap();
    assert_eq!(next_notification(&mut listener).await, "after");

    // In one transaction, receives (new, duplicate, ignored) then an enqueue: only the enqueue
    // notifies.
    for (svix_id, body, envelope) in [
        ("msg_quiet_2", &routed, &routed_envelope),
        ("msg_quiet_2", &routed, &routed_envelope),
        ("msg_quiet_3", &ignored, &ignored_envelope),
    ] {
        let id = SvixId::parse(svix_id).unwrap();
        let mut tx = conn.begin().await.unwrap();
        receive(&mut tx, entry(&id, body, envelope)).await.unwrap();
        jobs::enqueue(
            &mut tx,
            &jobs::NewJob::new("t.b", json!({})).queue("same-tx"),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            next_notification(&mut listener).await,
            "same-tx",
            "{svix_id}"
        );
    }
    marker(&db.pool, "marker-2").await;
    assert_eq!(next_notification(&mut listener).await, "marker-2");
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from onboard.job where queue = 'clerk'"
        )
        .await,
        2
    );
}

#[tokio::test]
async fn a_new_saga_wakes_its_first_steps_queue_and_a_rolled_back_one_wakes_nothing() {
    use onboarding::{ClerkOrgId, Creator, OnboardingRequest, Source, start};
    let db = fresh_db().await;
    let mut listener = job_channel(&db.url).await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let request = |org: &str| OnboardingRequest {
        org_id: ClerkOrgId::parse(org).unwrap(),
        name: Some("Acme".into()),
        slug: Some("acme".into()),
        creator: Creator::default(),
        source: Source::Api,
    };

    let mut tx = conn.begin().await.unwrap();
    start(&mut tx, &request("org_wake_rolled_back"))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    marker(&db.pool, "marker").await;
    assert_eq!(next_notification(&mut listener).await, "marker");

    let started = start(&mut conn, &request("org_wake")).await.unwrap();
    let queue: String =
        sqlx::query_scalar("select queue from onboard.job where args->>'onboarding_id' = $1::text")
            .bind(started.onboarding_id.to_string())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(next_notification(&mut listener).await, queue);
}

#[tokio::test]
async fn the_coalescer_sends_each_noted_queue_once_per_round() {
    use jobs::notify::Coalescer;
    let db = fresh_db().await;
    let mut listener = job_channel(&db.url).await;
    let coalescer = Coalescer::spawn(db.pool.clone(), jobs::notify::DEFAULT_EVERY);
    // A burst: on this single-threaded runtime the task cannot run until the test awaits.
    for _ in 0..500 {
        coalescer.note("clerk");
        coalescer.note("email");
    }
    assert_eq!(next_notification(&mut listener).await, "clerk");
    assert_eq!(next_notification(&mut listener).await, "email");
    marker(&db.pool, "marker").await;
    assert_eq!(next_notification(&mut listener).await, "marker");
    wait_for("the round to count", Duration::from_secs(10), || async {
        (coalescer.stats().rounds_sent >= 1).then_some(())
    })
    .await;
    let stats = coalescer.stats();
    assert_eq!((stats.rounds_sent, stats.rounds_failed), (1, 0));

    // Later notes make later rounds.
    coalescer.note("clerk");
    assert_eq!(next_notification(&mut listener).await, "clerk");
    wait_for(
        "the second round to count",
        Duration::from_secs(10),
        || async { (coalescer.stats().rounds_sent == 2).then_some(()) },
    )
    .await;

    // Dropped with a queue noted: a last round sends it.
    coalescer.note("last");
    drop(coalescer);
    assert_eq!(next_notification(&mut listener).await, "last");
}

#[tokio::test]
async fn a_failed_round_is_retried_until_the_database_answers() {
    use jobs::notify::Coalescer;
    let db = fresh_db().await;
    let mut listener = job_channel(&db.url).await;
    // One connection, held by the test: the coalescer's rounds cannot get it.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(100))
        .connect(&db.url)
        .await
        .unwrap();
    let held = pool.acquire().await.unwrap();
    let coalescer = Coalescer::spawn(pool.clone(), jobs::notify::DEFAULT_EVERY);
    coalescer.note("clerk");
    wait_for("a round to fail", Duration::from_secs(10), || async {
        (coalescer.stats().rounds_failed >= 1).then_some(())
    })
    .await;
    // Noted while rounds fail: merged with the failed round's queue.
    coalescer.note("clerk");
    coalescer.note("email");
    drop(held);
    // A round in flight when the connection came back may send `clerk` alone first.
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        let payload = next_notification(&mut listener).await;
        assert!(["clerk", "email"].contains(&payload.as_str()), "{payload}");
        seen.insert(payload);
    }
    wait_for("the round to count", Duration::from_secs(10), || async {
        (coalescer.stats().rounds_sent >= 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn deliveries_stored_together_each_get_their_rows_and_a_bad_one_is_rejected_alone() {
    use onboarding::inbox::{OwnedEntry, ReceiveError};
    let db = fresh_db().await;
    let writer = ingress::inbox_writer::InboxWriter::spawn(db.pool.clone());
    let entry = |id: String, payload: &str| OwnedEntry {
        svix_id: id,
        event_type: "user.created".into(),
        payload: payload.to_owned(),
        svix_timestamp: 1,
        svix_signature: "v1,x".into(),
        kind: Some("clerk.user.created"),
    };
    let good = r#"{"type":"user.created","data":{"id":"user_1"}}"#;
    let bad = r#"{"type":"user.created","data":{"first_name":"a\u0000b"}}"#;
    // 40 distinct deliveries, each sent twice, and one PostgreSQL cannot store, all at once.
    let mut calls = Vec::new();
    for n in 0..80 {
        let writer = writer.clone();
        let e = entry(format!("msg_batch{}", n % 40), good);
        calls.push(tokio::spawn(async move {
            writer.receive(e, Duration::from_secs(60)).await
        }));
    }
    let bad_call = {
        let writer = writer.clone();
        let e = entry("msg_batch_bad".into(), bad);
        tokio::spawn(async move { writer.receive(e, Duration::from_secs(60)).await })
    };
    let mut new = 0;
    for call in calls {
        if call.await.unwrap().unwrap().new {
            new += 1;
        }
    }
    assert_eq!(new, 40, "each svix-id is new exactly once");
    assert!(matches!(
        bad_call.await.unwrap(),
        Err(ingress::inbox_writer::WriteError::Receive(
            ReceiveError::Unstorable(_)
        ))
    ));
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.inbox").await,
        40
    );
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.job").await,
        40
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(distinct args->>'inbox_id') from onboard.job"
        )
        .await,
        40
    );
}
