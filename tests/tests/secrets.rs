//! No secret in the logs (issue 9): the tracing output of the ingress, the worker and the saga
//! over a full run — webhook deliveries good and bad, sagas that succeed, retry, compensate and
//! fail their email, API calls with good, wrong and malformed keys, operators logging in to the
//! dashboard (rightly and wrongly) and calling its API with a token — captured at `trace` for
//! our crates and `debug` for the rest, as text and as JSON, holds none of the configured
//! secrets: the webhook secret, the Twilio auth token and `base64(sid:token)`, the Resend key,
//! the Clerk secret key, API keys (valid or presented), operator passwords (right or wrong),
//! operator tokens (valid or presented) and session cookies.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::dashboard::{Dashboard, bearer, cookie_pair, post_login};
use integration_tests::{fresh_db, wait_for};
use reqwest::Method;
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

use integration_tests::stack::fixture;

const WEBHOOK_SECRET: &str = "whsec_bG9nLXRlc3Qtd2ViaG9vay1zZWNyZXQtOWYzYTFj";
const WEBHOOK_KEY: &str = "bG9nLXRlc3Qtd2ViaG9vay1zZWNyZXQtOWYzYTFj";
const TWILIO_SID: &str = "ACl0gtest00000000000000000000000000";
const TWILIO_TOKEN: &str = "twilio-token-log-test-5d1e9b";
const RESEND_KEY: &str = "re_log_test_key_8c2f4a";
const CLERK_KEY: &str = "sk_test_log_test_3b7e0d";
const OPERATOR: &str = "log-operator";
const OPERATOR_PASSWORD: &str = "operator-password-log-test-41c7e2";
const WRONG_PASSWORD: &str = "wrong-password-log-test-77ad09";
const WRONG_TOKEN: &str =
    "opt_0123456789abcdef_9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0";
const WRONG_KEY: &str =
    "onb_0123456789abcdef_fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

/// Everything the subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn user_created(user: &str, email: &str) -> Value {
    let mut event = fixture("user.created.json");
    event["data"]["id"] = json!(user);
    event["data"]["primary_email_address_id"] = json!("idn_log");
    event["data"]["email_addresses"] = json!([{"id": "idn_log", "email_address": email}]);
    event
}

fn organization_created(org: &str, slug: &str, user: &str) -> Value {
    let mut event = fixture("organization.created.json");
    event["data"]["id"] = json!(org);
    event["data"]["slug"] = json!(slug);
    event["data"]["created_by"] = json!(user);
    event
}

#[tokio::test]
async fn a_full_run_logs_none_of_the_configured_secrets() {
    let capture = Capture::default();
    let filter = tracing_subscriber::EnvFilter::new(
        "debug,ingress=trace,worker=trace,onboarding=trace,jobs=trace,sandbox=trace,apalis=trace,apalis_core=trace,dashboard=trace,tower_http=trace",
    );
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(capture.clone())
                .with_ansi(false),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_span_list(true)
                .with_writer(capture.clone()),
        );
    // The process's only subscriber (this test is its binary's only test): every thread, every
    // task and every callsite reports to it.
    tracing::subscriber::set_global_default(subscriber).expect("the first subscriber");

    let db = fresh_db().await;
    let sandbox = sandbox::spawn(
        "127.0.0.1:0".parse().unwrap(),
        sandbox::SandboxConfig {
            twilio_account_sid: TWILIO_SID.into(),
            twilio_auth_token: TWILIO_TOKEN.into(),
            resend_api_key: RESEND_KEY.into(),
            clerk_secret_key: CLERK_KEY.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let secrets =
        ingress::settings::WebhookSecrets::parse(&WEBHOOK_SECRET.to_owned().into()).unwrap();
    let mut settings = ingress::settings::Settings::new(secrets);
    settings.ingress_addr = "127.0.0.1:0".parse().unwrap();
    settings.dashboard_addr = Some("127.0.0.1:0".parse().unwrap());
    let ingress = ingress::startup::spawn(db.pool.clone(), &settings)
        .await
        .unwrap();
    let providers = worker::app::ProviderSettings::on_one_host(
        &sandbox.base_url(),
        TWILIO_SID,
        TWILIO_TOKEN,
        RESEND_KEY,
        CLERK_KEY,
        Duration::from_secs(2),
    )
    .unwrap();
    let (stop, worker) = integration_tests::stack::spawn_worker_runtime(
        db.pool.clone(),
        providers.providers().unwrap(),
    );

    let base = format!("http://{}", ingress.ingress_addr);
    let webhook = format!("{base}/webhooks/clerk");
    let deliver = |event: Value| {
        let webhook = webhook.clone();
        async move {
            let body = serde_json::to_vec(&event).unwrap();
            let (status, text) =
                ingress::send::send_event(&webhook, WEBHOOK_SECRET, &body, None, None)
                    .await
                    .unwrap();
            assert!(status < 300, "{status} {text}");
        }
    };
    sandbox.register("org_logflaky", "log-flaky-twilio").await;
    sandbox.register("org_logfail", "log-fail-twilio").await;
    deliver(user_created("user_logok", "ok.logs@example.com")).await;
    deliver(user_created("user_logfail", "fail@example.com")).await;
    // A saga that completes, one whose Twilio step retries, one that compensates, one whose
    // email fails for good.
    deliver(organization_created("org_logok", "log-ok", "user_logok")).await;
    deliver(organization_created(
        "org_logflaky",
        "log-flaky-twilio",
        "user_logok",
    ))
    .await;
    deliver(organization_created(
        "org_logfail",
        "log-fail-twilio",
        "user_logok",
    ))
    .await;
    deliver(organization_created(
        "org_logmail",
        "log-mail",
        "user_logfail",
    ))
    .await;
    // A forged delivery and one that is not a Clerk event.
    let (status, _) = ingress::send::send_event(
        &webhook,
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        b"{}",
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 401);
    let (status, _) = ingress::send::send_event(&webhook, WEBHOOK_SECRET, b"[]", None, None)
        .await
        .unwrap();
    assert_eq!(status, 400);

    // The API: a good key, a wrong key, a malformed header.
    let (_, key) = onboarding::api_key::create(&db.pool, "logs").await.unwrap();
    let client = reqwest::Client::new();
    let body = json!({"org_id": "org_logapi", "name": "Log API", "slug": "log-api",
                      "creator_user_id": "user_logok", "creator_email": "api.logs@example.com"});
    let accepted = client
        .post(format!("{base}/v1/onboarding"))
        .bearer_auth(key.expose_secret())
        .header("idempotency-key", "logs-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let id = accepted.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    for (auth, path) in [
        (
            format!("Bearer {}", key.expose_secret()),
            format!("/v1/onboarding/{id}"),
        ),
        (
            format!("Bearer {}", key.expose_secret()),
            "/v1/onboarding?org_id=org_logapi".to_owned(),
        ),
        (
            format!("Bearer {WRONG_KEY}"),
            format!("/v1/onboarding/{id}"),
        ),
        (
            format!(
                "Basic {}",
                base64(format!("{TWILIO_SID}:{TWILIO_TOKEN}").as_bytes())
            ),
            format!("/v1/onboarding/{id}"),
        ),
    ] {
        let response = client
            .get(format!("{base}{path}"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert!(response.status() == 200 || response.status() == 401);
    }

    // The dashboard: an operator logs in (form POST) and reads with the session, logs in with
    // a wrong password, and calls the API with a token (as `onboard operator token` makes
    // it) and with a wrong one.
    dashboard::account::add(
        &db.pool,
        OPERATOR,
        dashboard::account::Role::Operator,
        OPERATOR_PASSWORD,
    )
    .await
    .unwrap();
    let board = Dashboard::spawn(db.pool.clone()).await;
    let login = post_login(&board, OPERATOR, OPERATOR_PASSWORD, HeaderMap::new()).await;
    assert_eq!(login.status(), 303, "the operator's login");
    let cookie = cookie_pair(&login);
    let session_secret = cookie.split_once('=').unwrap().1.to_owned();
    let me = client
        .get(board.url("/api/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let refused = post_login(&board, OPERATOR, WRONG_PASSWORD, HeaderMap::new()).await;
    assert_eq!(refused.status(), 401, "a wrong password");
    let (_, token) = dashboard::account::create_token(&db.pool, OPERATOR)
        .await
        .unwrap();
    let (status, _) = bearer(&board, Method::GET, "/api/overview", &token, None).await;
    assert_eq!(status, 200, "the operator's token");
    let (status, _) = bearer(&board, Method::GET, "/api/overview", WRONG_TOKEN, None).await;
    assert_eq!(status, 401, "a wrong token");

    for (org, state) in [
        ("org_logok", "completed"),
        ("org_logflaky", "completed"),
        ("org_logfail", "compensated"),
        ("org_logmail", "completed_with_errors"),
        ("org_logapi", "completed"),
    ] {
        wait_for(
            &format!("{org} to be {state}"),
            Duration::from_secs(120),
            || async {
                let now: Option<String> = sqlx::query_scalar(
                    "select state from onboard.onboarding where clerk_org_id = $1",
                )
                .bind(org)
                .fetch_optional(&db.pool)
                .await
                .unwrap();
                (now.as_deref() == Some(state)).then_some(())
            },
        )
        .await;
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
    let _ = ingress.shutdown().await;
    sandbox.shutdown().await;

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    // The capture saw the roles at work (else the test would prove nothing).
    for seen in [
        "clerk_webhook",
        "/v1/onboarding",
        "onboarding.undo_twilio_subaccount",
        "queue-clerk",
        // The login's and the token's lookups (statements are logged, not their parameters).
        "password_hash from onboard.operator",
        "from onboard.operator_token",
    ] {
        assert!(logs.contains(seen), "the capture missed `{seen}`");
    }
    let basic = base64(format!("{TWILIO_SID}:{TWILIO_TOKEN}").as_bytes());
    let api_key = key.expose_secret().to_owned();
    let api_secret = api_key.rsplit('_').next().unwrap().to_owned();
    let token_secret = token.rsplit('_').next().unwrap().to_owned();
    for (name, secret) in [
        ("the webhook secret", WEBHOOK_SECRET),
        ("the webhook key", WEBHOOK_KEY),
        ("the Twilio auth token", TWILIO_TOKEN),
        ("base64(sid:token)", basic.as_str()),
        ("the Resend key", RESEND_KEY),
        ("the Clerk secret key", CLERK_KEY),
        ("the API key", api_key.as_str()),
        ("the API key's secret part", api_secret.as_str()),
        ("a presented wrong API key", WRONG_KEY),
        ("the operator's password", OPERATOR_PASSWORD),
        ("a wrong password presented", WRONG_PASSWORD),
        ("the operator's token", token.as_str()),
        ("the operator token's secret part", token_secret.as_str()),
        ("a presented wrong operator token", WRONG_TOKEN),
        ("the session cookie", session_secret.as_str()),
    ] {
        if let Some(at) = logs.find(secret) {
            let line_start = logs[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = logs[at..].find('\n').map_or(logs.len(), |i| at + i);
            panic!("{name} is in the logs: {}", &logs[line_start..line_end]);
        }
    }
}
