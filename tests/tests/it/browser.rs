//! The dashboard in real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
//! fantoccini): an operator finds a failed onboarding, reads the Twilio error, heals the
//! sandbox, restarts it and watches it complete without reloading; then cancels a running saga
//! step from its job page and watches the saga compensate. Screenshots go to
//! `target/screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dashboard::account::Role;
use fantoccini::{Client, ClientBuilder, Locator};
use integration_tests::dashboard::{Dashboard, PASSWORD, add_operator};
use integration_tests::stack::{Stack, StackOptions};
use integration_tests::wait_for;
use serde_json::json;

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_driver() -> (Driver, String) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (apt-get install chromium chromium-driver; .ci/run installs them)");
    let url = format!("http://127.0.0.1:{port}");
    let status = format!("{url}/status");
    wait_for(
        "chromedriver to answer",
        Duration::from_secs(20),
        || async {
            reqwest::get(&status)
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        },
    )
    .await;
    (Driver(child), url)
}

async fn browser(driver: &str) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1100"]}),
    );
    ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a Chromium session")
}

fn shots_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots_dir().join(format!("{name}.png")), png).unwrap();
}

/// Clicks the action button `selector` (a form submit) and waits until the form's answer has
/// replaced the page: the button's element is stale. What is found next is on the new page,
/// not on the one the click left (whose elements go stale under the finder).
async fn submit_action(c: &Client, selector: &str) {
    let button = c.find(Locator::Css(selector)).await.unwrap();
    button.click().await.unwrap();
    wait_for(
        &format!("the answer to {selector} to replace the page"),
        Duration::from_secs(60),
        || async {
            match button.is_displayed().await {
                Err(error) if error.is_stale_element_reference() => Some(()),
                _ => None,
            }
        },
    )
    .await;
}

/// Waits (polling the page, never reloading it) until the saga state shown is `state`.
async fn wait_shown_state(c: &Client, state: &str) {
    let script =
        "var e = document.getElementById('saga-state'); return e ? e.dataset.state : null;";
    wait_for(
        &format!("the page to show {state}"),
        Duration::from_secs(60),
        || async {
            let shown = c.execute(script, vec![]).await.ok()?;
            (shown.as_str() == Some(state)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn an_operator_fixes_a_failed_onboarding_from_the_browser_alone() {
    if std::env::var_os("ONBOARD_SKIP_BROWSER_TEST").is_some() {
        eprintln!("ONBOARD_SKIP_BROWSER_TEST is set: skipped");
        return;
    }
    let (_driver, driver_url) = start_driver().await;
    let stack = Stack::start(StackOptions {
        slow_delay: Duration::from_secs(30),
        client_timeout: Duration::from_secs(40),
        ..Default::default()
    })
    .await;
    let pool = stack.db.pool.clone();
    add_operator(&pool, "ops", Role::Operator).await;
    let d = Dashboard::spawn(pool.clone()).await;
    let (org, user) = ("org_browser1", "user_browser1");
    stack.sandbox.register(org, "browser-fail-twilio").await;
    stack
        .deliver_new_org(org, "browser-fail-twilio", user, "owner@browser.test")
        .await;
    stack.wait_saga(org, "compensated").await;
    stack.wait_idle().await;

    let c = browser(&driver_url).await;
    // Log in.
    c.goto(&d.url("/")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().starts_with("/login"));
    let form = c.form(Locator::Css("form.login")).await.unwrap();
    form.set_by_name("name", "ops").await.unwrap();
    form.set_by_name("password", PASSWORD).await.unwrap();
    form.submit().await.unwrap();
    c.wait().for_element(Locator::Id("alerts")).await.unwrap();
    shot(&c, "overview").await;

    // Find the onboarding, see it compensated with Twilio's error.
    c.goto(&d.url(&format!("/onboardings?q={org}")))
        .await
        .unwrap();
    c.find(Locator::LinkText(org))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_shown_state(&c, "compensated").await;
    let steps = c
        .find(Locator::Id("steps"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        steps.contains("permanent provider error 400 (20001)"),
        "{steps}"
    );
    shot(&c, "onboarding-compensated").await;

    // Heal, restart, watch it complete without reloading.
    stack.sandbox.heal("browser-fail-twilio").await;
    submit_action(&c, "button[data-action=restart]").await;
    c.wait()
        .for_element(Locator::Id("saga-state"))
        .await
        .unwrap();
    c.execute("window.__noReload = 42;", vec![]).await.unwrap();
    wait_shown_state(&c, "completed").await;
    let marker = c
        .execute("return window.__noReload;", vec![])
        .await
        .unwrap();
    assert_eq!(
        marker,
        json!(42),
        "the page updated in place, it was not reloaded"
    );
    assert!(
        c.find_all(Locator::Css("button[data-action=restart]"))
            .await
            .unwrap()
            .is_empty(),
        "restart is gone once completed"
    );
    shot(&c, "onboarding-completed").await;

    // Cancel a running saga step from its job page: the saga compensates.
    let (org2, user2) = ("org_browser2", "user_browser2");
    stack.sandbox.register(org2, "browser2-slow-twilio").await;
    stack
        .deliver_new_org(org2, "browser2-slow-twilio", user2, "owner2@browser.test")
        .await;
    let step_job: i64 = wait_for("the Twilio step to run", Duration::from_secs(60), || async {
        sqlx::query_scalar(
            "select j.id from onboard.job j join onboard.onboarding s on s.id = (j.args->>'onboarding_id')::bigint
              where s.clerk_org_id = $1 and j.kind = 'onboarding.twilio_subaccount' and j.state = 'running'",
        )
        .bind(org2)
        .fetch_optional(&pool)
        .await
        .unwrap()
    })
    .await;
    c.goto(&d.url(&format!("/jobs/{step_job}"))).await.unwrap();
    shot(&c, "job-running").await;
    submit_action(&c, "button[data-action=cancel]").await;
    c.wait()
        .for_element(Locator::Id("saga-link"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_shown_state(&c, "compensated").await;
    shot(&c, "onboarding-cancelled-step").await;
    assert_eq!(
        integration_tests::job_state(&pool, step_job).await,
        "cancelled"
    );
    c.goto(&d.url(&format!("/jobs/{step_job}"))).await.unwrap();
    shot(&c, "job-cancelled").await;

    c.close().await.unwrap();
    stack.stop().await;
}
