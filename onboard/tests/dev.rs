//! `onboard dev` as a user runs it (issue 9 §14): it prints no database password, no webhook
//! secret but the dev one it uses, and keeps one active `dev` API key however often it starts.

use std::process::Stdio;
use std::time::Duration;

use jobs::local_pg::{Durability, LocalPostgres};
use tokio::io::{AsyncBufReadExt, BufReader};

const PASSWORD: &str = "pw-must-not-print-7431";
const CONFIGURED_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Starts `onboard dev` on `url`, returns what it printed up to its `try` line, then kills it.
async fn start_dev(url: &str) -> String {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_onboard"))
        .arg("dev")
        .env("DATABASE_URL", url)
        .env("CLERK_WEBHOOK_SIGNING_SECRET", CONFIGURED_SECRET)
        .env("ONBOARD_INGRESS_ADDR", "127.0.0.1:0")
        .env("ONBOARD_DASHBOARD_ADDR", "127.0.0.1:0")
        .env("ONBOARD_SANDBOX_ADDR", "127.0.0.1:0")
        .env_remove("TWILIO_ACCOUNT_SID")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start onboard dev");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut errors = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut printed = String::new();
    let mut logged = String::new();
    let read = async {
        loop {
            tokio::select! {
                line = lines.next_line() => {
                    let line = line.unwrap().expect("onboard dev exited before it was ready");
                    printed.push_str(&line);
                    printed.push('\n');
                    if line.trim_start().starts_with("try") {
                        return;
                    }
                }
                Ok(Some(line)) = errors.next_line() => {
                    logged.push_str(&line);
                    logged.push('\n');
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("onboard dev did not get ready");
    child.kill().await.unwrap();
    format!("{printed}{logged}")
}

#[tokio::test]
async fn dev_prints_no_password_nor_a_secret_it_does_not_use_and_keeps_one_dev_key() {
    let pg = tokio::task::spawn_blocking(|| LocalPostgres::start(None, Durability::Relaxed))
        .await
        .unwrap()
        .expect("a throwaway PostgreSQL");
    // The cluster trusts loopback, so any password connects; it must still never be printed.
    let url = pg
        .url("postgres")
        .replace("postgres@", &format!("postgres:{PASSWORD}@"));
    let first = start_dev(&url).await;
    let second = start_dev(&url).await;
    for output in [&first, &second] {
        assert!(output.contains("database"), "{output}");
        assert!(
            !output.contains(PASSWORD),
            "the password was printed:\n{output}"
        );
        assert!(
            !output.contains(ingress::DEV_WEBHOOK_SECRET),
            "the dev secret was printed though another is configured:\n{output}"
        );
        assert!(!output.contains(CONFIGURED_SECRET), "{output}");
    }
    let key_of = |output: &str| {
        output
            .split_whitespace()
            .find(|w| w.starts_with("onb_"))
            .map(|w| w.trim_end_matches([';', ')']).to_owned())
            .expect("a printed API key")
    };
    let pool = jobs::db::connect(&pg.url("postgres"), &jobs::db::PoolSettings::default())
        .await
        .unwrap();
    let active: i64 =
        sqlx::query_scalar("select count(*) from onboard.api_key where revoked_at is null")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(active, 1, "every start leaves one more active key");
    assert_eq!(
        onboarding::api_key::authenticate(&pool, &key_of(&first))
            .await
            .unwrap(),
        None,
        "the previous start's key still works"
    );
    assert!(
        onboarding::api_key::authenticate(&pool, &key_of(&second))
            .await
            .unwrap()
            .is_some()
    );
}
