//! The provider clients against the sandbox over real loopback HTTP.

use std::time::Duration;

use sandbox::{Action, Effect, Provider, Sandbox, SandboxConfig};
use secrecy::SecretString;
use serde_json::{Value, json};
use worker::provider::{
    AccountStatus, ClerkClient, ClerkConfig, Email, ProviderError, ResendClient, ResendConfig,
    TwilioClient, TwilioConfig,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn spawn_sandbox(config: SandboxConfig) -> Sandbox {
    sandbox::spawn("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("sandbox starts")
}

fn base_url(sandbox: &Sandbox) -> reqwest::Url {
    sandbox.base_url().parse().unwrap()
}

fn twilio_config(sandbox: &Sandbox) -> TwilioConfig {
    TwilioConfig::new(
        base_url(sandbox),
        SandboxConfig::DEV_TWILIO_ACCOUNT_SID,
        SecretString::from(SandboxConfig::DEV_TWILIO_AUTH_TOKEN),
    )
}

fn twilio(sandbox: &Sandbox) -> TwilioClient {
    TwilioClient::new(twilio_config(sandbox)).unwrap()
}

fn resend(sandbox: &Sandbox) -> ResendClient {
    ResendClient::new(ResendConfig::new(
        base_url(sandbox),
        SecretString::from(SandboxConfig::DEV_RESEND_API_KEY),
    ))
    .unwrap()
}

fn clerk(sandbox: &Sandbox) -> ClerkClient {
    ClerkClient::new(ClerkConfig::new(
        base_url(sandbox),
        SecretString::from(SandboxConfig::DEV_CLERK_SECRET_KEY),
    ))
    .unwrap()
}

fn email(to: &str, subject: &str) -> Email {
    Email {
        from: "Onboard <onboard@example.com>".to_owned(),
        to: vec![to.to_owned()],
        subject: subject.to_owned(),
        html: Some("<p>Welcome</p>".to_owned()),
        text: Some("Welcome".to_owned()),
    }
}

/// The `(action, key, status)` of every effect of `action`.
async fn effects(sandbox: &Sandbox, action: Action) -> Vec<Effect> {
    sandbox
        .ledger()
        .await
        .into_iter()
        .filter(|effect| effect.action == action)
        .collect()
}

fn statuses(effects: &[Effect]) -> Vec<u16> {
    effects.iter().map(|effect| effect.status).collect()
}

#[tokio::test]
async fn created_subaccount_is_found_by_its_friendly_name_and_adopted() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let twilio = twilio(&sandbox);

    let created = twilio.create_subaccount("org:org_adopt").await?;
    assert!(created.sid.starts_with("AC") && created.sid.len() == 34);
    assert_eq!(created.status, AccountStatus::Active);
    assert_eq!(
        created.owner_account_sid.as_deref(),
        Some(SandboxConfig::DEV_TWILIO_ACCOUNT_SID)
    );
    twilio.create_subaccount("org:org_other").await?;

    let found = twilio
        .list_subaccounts("org:org_adopt", Some(AccountStatus::Active))
        .await?;
    assert_eq!(found, vec![created.clone()]);
    assert!(
        twilio
            .list_subaccounts("org:org_adopt", Some(AccountStatus::Closed))
            .await?
            .is_empty()
    );
    assert!(
        twilio
            .list_subaccounts("org:org_ad", None)
            .await?
            .is_empty()
    );
    assert_eq!(twilio.fetch_subaccount(&created.sid).await?, created);

    let creates = effects(&sandbox, Action::CreateSubaccount).await;
    assert_eq!(creates[0].key, "org:org_adopt");
    assert_eq!(creates[0].id.as_deref(), Some(created.sid.as_str()));
    assert_eq!(creates[0].provider, Provider::Twilio);
    assert_eq!(sandbox.ledger().await.len(), 2, "reads are not effects");
    sandbox.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn listing_follows_next_page_uri_across_pages() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let twilio = TwilioClient::new(TwilioConfig {
        page_size: 2,
        ..twilio_config(&sandbox)
    })?;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(twilio.create_subaccount("org:org_many").await?.sid);
    }
    let listed: Vec<String> = twilio
        .list_subaccounts("org:org_many", None)
        .await?
        .into_iter()
        .map(|account| account.sid)
        .collect();
    assert_eq!(listed, created);
    Ok(())
}

#[tokio::test]
async fn closed_subaccount_cannot_be_reactivated() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let twilio = twilio(&sandbox);
    let account = twilio.create_subaccount("org:org_close").await?;

    let suspended = twilio
        .update_status(&account.sid, AccountStatus::Suspended)
        .await?;
    assert_eq!(suspended.status, AccountStatus::Suspended);
    let closed = twilio
        .update_status(&account.sid, AccountStatus::Closed)
        .await?;
    assert_eq!(closed.status, AccountStatus::Closed);
    let again = twilio
        .update_status(&account.sid, AccountStatus::Closed)
        .await?;
    assert_eq!(again.status, AccountStatus::Closed, "closing is idempotent");

    let reopen = twilio
        .update_status(&account.sid, AccountStatus::Active)
        .await
        .unwrap_err();
    assert!(
        matches!(reopen, ProviderError::Permanent { status: 400, .. }),
        "{reopen:?}"
    );
    assert_eq!(
        twilio.fetch_subaccount(&account.sid).await?.status,
        AccountStatus::Closed
    );
    assert!(
        twilio
            .list_subaccounts("org:org_close", Some(AccountStatus::Active))
            .await?
            .is_empty()
    );

    let ledger = sandbox.ledger().await;
    let actions: Vec<(Action, u16)> = ledger
        .iter()
        .map(|effect| (effect.action, effect.status))
        .collect();
    assert_eq!(
        actions,
        [
            (Action::CreateSubaccount, 201),
            (Action::SuspendSubaccount, 200),
            (Action::CloseSubaccount, 200),
            (Action::CloseSubaccount, 200),
            (Action::ActivateSubaccount, 400),
        ]
    );
    assert!(
        ledger[1..]
            .iter()
            .all(|effect| effect.key == "org:org_close")
    );
    Ok(())
}

#[tokio::test]
async fn unknown_subaccount_is_a_permanent_not_found() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let error = twilio(&sandbox)
        .fetch_subaccount("AC00000000000000000000000000000000")
        .await
        .unwrap_err();
    assert!(error.is_not_found(), "{error:?}");
    assert_eq!(error.code(), Some("20404"));
    Ok(())
}

#[tokio::test]
async fn bad_credentials_are_permanent_for_every_provider() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let twilio = TwilioClient::new(TwilioConfig {
        auth_token: SecretString::from("wrong-token"),
        ..twilio_config(&sandbox)
    })?;
    let error = twilio.create_subaccount("org:org_creds").await.unwrap_err();
    assert_eq!(
        error,
        ProviderError::Permanent {
            status: 401,
            code: Some("20003".to_owned()),
            message: "twilio: Authenticate".to_owned(),
        }
    );
    let error = twilio
        .list_subaccounts("org:org_creds", None)
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(401));

    let resend = ResendClient::new(ResendConfig::new(
        base_url(&sandbox),
        SecretString::from("re_wrong"),
    ))?;
    let error = resend
        .send_email(&email("a@example.com", "hi"), "key-1")
        .await
        .unwrap_err();
    assert!(error.is_permanent());
    assert_eq!(
        (error.status(), error.code()),
        (Some(403), Some("invalid_api_key"))
    );

    let clerk = ClerkClient::new(ClerkConfig::new(
        base_url(&sandbox),
        SecretString::from("sk_test_wrong"),
    ))?;
    let error = clerk.get_user("user_1").await.unwrap_err();
    assert_eq!(
        (error.status(), error.code()),
        (Some(401), Some("authentication_invalid"))
    );

    assert!(sandbox.subaccounts().await.is_empty());
    let creates = effects(&sandbox, Action::CreateSubaccount).await;
    assert_eq!(statuses(&creates), [401]);
    assert_eq!(creates[0].id, None);
    Ok(())
}

#[tokio::test]
async fn fail_twilio_org_is_refused_permanently_with_400() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let error = twilio(&sandbox)
        .create_subaccount("org:org_acme-fail-twilio")
        .await
        .unwrap_err();
    assert!(
        matches!(error, ProviderError::Permanent { status: 400, .. }),
        "{error:?}"
    );
    assert!(sandbox.subaccounts().await.is_empty());
    let creates = effects(&sandbox, Action::CreateSubaccount).await;
    assert_eq!(statuses(&creates), [400]);
    assert_eq!(creates[0].key, "org:org_acme-fail-twilio");
    Ok(())
}

#[tokio::test]
async fn healing_a_registered_fail_twilio_slug_lets_the_create_succeed() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let twilio = twilio(&sandbox);
    let http = reqwest::Client::new();
    http.post(format!("{}/sandbox/register", sandbox.base_url()))
        .json(&json!({"org_id": "org_plain", "slug": "acme-fail-twilio"}))
        .send()
        .await?
        .error_for_status()?;

    let error = twilio.create_subaccount("org:org_plain").await.unwrap_err();
    assert_eq!(error.status(), Some(400));

    http.post(format!("{}/sandbox/heal", sandbox.base_url()))
        .json(&json!({"key": "acme-fail-twilio"}))
        .send()
        .await?
        .error_for_status()?;
    let account = twilio.create_subaccount("org:org_plain").await?;
    assert_eq!(account.friendly_name, "org:org_plain");
    assert_eq!(
        statuses(&effects(&sandbox, Action::CreateSubaccount).await),
        [400, 201]
    );
    Ok(())
}

#[tokio::test]
async fn flaky_twilio_create_succeeds_on_the_third_attempt() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let twilio = twilio(&sandbox);
    let name = "org:org_acme-flaky-twilio";
    for _ in 0..2 {
        let error = twilio.create_subaccount(name).await.unwrap_err();
        assert!(
            matches!(
                error,
                ProviderError::Retryable {
                    status: Some(503),
                    ..
                }
            ),
            "{error:?}"
        );
    }
    let account = twilio.create_subaccount(name).await?;

    let creates = effects(&sandbox, Action::CreateSubaccount).await;
    assert_eq!(statuses(&creates), [503, 503, 201]);
    assert_eq!(creates[0].id, None);
    assert_eq!(creates[2].id.as_deref(), Some(account.sid.as_str()));
    assert!(creates.iter().all(|effect| effect.key == name));
    Ok(())
}

#[tokio::test]
async fn slow_twilio_create_times_out_as_ambiguous_and_the_account_exists() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig {
        slow_delay: Duration::from_secs(3),
        ..SandboxConfig::default()
    })
    .await;
    let twilio = TwilioClient::new(TwilioConfig {
        timeout: Duration::from_millis(300),
        ..twilio_config(&sandbox)
    })?;
    let name = "org:org_acme-slow-twilio";

    let error = twilio.create_subaccount(name).await.unwrap_err();
    assert!(error.is_ambiguous(), "{error:?}");

    let adopted = twilio
        .list_subaccounts(name, Some(AccountStatus::Active))
        .await?;
    assert_eq!(adopted.len(), 1);
    let creates = effects(&sandbox, Action::CreateSubaccount).await;
    assert_eq!(statuses(&creates), [201]);
    assert_eq!(creates[0].id.as_deref(), Some(adopted[0].sid.as_str()));
    // Shutting down cuts the pending slow answer short instead of waiting 3 s for it.
    sandbox.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn connection_refused_is_retryable_without_a_status() -> TestResult {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    drop(listener);
    let twilio = TwilioClient::new(TwilioConfig::new(
        format!("http://{addr}").parse()?,
        SandboxConfig::DEV_TWILIO_ACCOUNT_SID,
        SecretString::from(SandboxConfig::DEV_TWILIO_AUTH_TOKEN),
    ))?;
    let error = twilio.create_subaccount("org:org_down").await.unwrap_err();
    assert!(
        matches!(
            error,
            ProviderError::Retryable {
                status: None,
                retry_after: None,
                ..
            }
        ),
        "a create that was never sent is safe to retry: {error:?}"
    );
    Ok(())
}

#[tokio::test]
async fn same_idempotency_key_sends_one_email_and_answers_the_same_id() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let resend = resend(&sandbox);
    let message = email("ada@example.com", "Welcome");

    let first = resend.send_email(&message, "welcome/org_1/user_1").await?;
    let second = resend.send_email(&message, "welcome/org_1/user_1").await?;
    assert_eq!(first, second);
    let other = resend.send_email(&message, "welcome/org_2/user_1").await?;
    assert_ne!(first, other);

    let sends = effects(&sandbox, Action::SendEmail).await;
    assert_eq!(statuses(&sends), [200, 200]);
    assert_eq!(sends[0].key, "ada@example.com");
    assert_eq!(sends[0].id.as_deref(), Some(first.as_str()));
    assert_eq!(sends[0].provider, Provider::Resend);
    Ok(())
}

#[tokio::test]
async fn same_idempotency_key_with_another_body_is_a_permanent_409() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let resend = resend(&sandbox);
    resend
        .send_email(&email("ada@example.com", "Welcome"), "welcome/org_1/user_1")
        .await?;
    let error = resend
        .send_email(
            &email("ada@example.com", "Welcome!"),
            "welcome/org_1/user_1",
        )
        .await
        .unwrap_err();
    assert!(error.is_permanent(), "{error:?}");
    assert_eq!(
        (error.status(), error.code()),
        (Some(409), Some("invalid_idempotent_request"))
    );
    assert_eq!(
        statuses(&effects(&sandbox, Action::SendEmail).await),
        [200, 409]
    );
    Ok(())
}

#[tokio::test]
async fn fail_recipient_is_a_permanent_422_until_healed() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let resend = resend(&sandbox);
    let message = email("fail@x.test", "Welcome");

    let error = resend
        .send_email(&message, "welcome/fail")
        .await
        .unwrap_err();
    assert!(error.is_permanent(), "{error:?}");
    assert_eq!(
        (error.status(), error.code()),
        (Some(422), Some("invalid_parameter"))
    );

    let healed = reqwest::Client::new()
        .post(format!("{}/sandbox/heal", sandbox.base_url()))
        .json(&json!({"key": "fail@x.test"}))
        .send()
        .await?;
    assert_eq!(healed.status(), 200);
    // A failed send is not remembered under its key, so the same key now goes through.
    resend.send_email(&message, "welcome/fail").await?;
    let sends = effects(&sandbox, Action::SendEmail).await;
    assert_eq!(statuses(&sends), [422, 200]);
    assert!(sends.iter().all(|effect| effect.key == "fail@x.test"));
    Ok(())
}

#[tokio::test]
async fn flaky_recipient_is_rate_limited_twice_with_retry_after_then_sent() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let resend = resend(&sandbox);
    let message = email("flaky@x.test", "Welcome");
    for _ in 0..2 {
        let error = resend
            .send_email(&message, "welcome/flaky")
            .await
            .unwrap_err();
        assert_eq!(
            (error.is_retryable(), error.status(), error.retry_after()),
            (true, Some(429), Some(Duration::from_secs(1))),
            "{error:?}"
        );
    }
    let id = resend.send_email(&message, "welcome/flaky").await?;
    let sends = effects(&sandbox, Action::SendEmail).await;
    assert_eq!(statuses(&sends), [429, 429, 200]);
    assert_eq!(sends[2].id.as_deref(), Some(id.as_str()));
    Ok(())
}

#[tokio::test]
async fn invalid_idempotency_key_is_refused_before_sending() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let error = resend(&sandbox)
        .send_email(&email("ada@example.com", "Welcome"), &"k".repeat(257))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("invalid_idempotency_key"));
    assert!(sandbox.ledger().await.is_empty());
    Ok(())
}

#[tokio::test]
async fn clerk_user_has_the_sandbox_primary_email() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let clerk = clerk(&sandbox);

    let user = clerk.get_user("user_2abc").await?;
    assert_eq!(user.id, "user_2abc");
    assert_eq!(user.primary_email.as_deref(), Some("user_2abc@example.com"));
    assert_eq!(user.first_name.as_deref(), Some("Sandbox"));

    let without = clerk.get_user("user_2abc-no-email").await?;
    assert_eq!(without.primary_email, None);
    let missing = clerk.get_user("user_2abc-missing").await.unwrap_err();
    assert!(missing.is_not_found(), "{missing:?}");
    assert_eq!(missing.code(), Some("resource_not_found"));
    assert!(sandbox.ledger().await.is_empty(), "reads are not effects");
    Ok(())
}

#[tokio::test]
async fn org_metadata_merges_deep_and_is_recorded() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let clerk = clerk(&sandbox);
    clerk
        .merge_org_public_metadata(
            "org_meta",
            json!({"onboarding": {"state": "running", "updated_at": "t1"}}),
        )
        .await?;
    clerk
        .merge_org_public_metadata("org_meta", json!({"crm": {"plan": "pro"}}))
        .await?;
    clerk
        .merge_org_public_metadata(
            "org_meta",
            json!({"onboarding": {"state": "completed", "updated_at": null}}),
        )
        .await?;

    let org: Value = reqwest::Client::new()
        .get(format!("{}/v1/organizations/org_meta", sandbox.base_url()))
        .bearer_auth(SandboxConfig::DEV_CLERK_SECRET_KEY)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(
        org["public_metadata"],
        json!({"onboarding": {"state": "completed"}, "crm": {"plan": "pro"}})
    );
    let updates = effects(&sandbox, Action::UpdateOrgMetadata).await;
    assert_eq!(statuses(&updates), [200, 200, 200]);
    assert!(
        updates
            .iter()
            .all(|effect| effect.key == "org_meta" && effect.provider == Provider::Clerk)
    );
    Ok(())
}

#[tokio::test]
async fn org_metadata_that_is_not_an_object_is_a_permanent_422() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let error = clerk(&sandbox)
        .merge_org_public_metadata("org_meta", json!(["not", "an", "object"]))
        .await
        .unwrap_err();
    assert_eq!(
        (error.status(), error.code()),
        (Some(422), Some("form_param_format_invalid"))
    );
    assert_eq!(
        statuses(&effects(&sandbox, Action::UpdateOrgMetadata).await),
        [422]
    );
    Ok(())
}

#[tokio::test]
async fn ledger_endpoint_serves_the_documented_json() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let account = twilio(&sandbox).create_subaccount("org:org_json").await?;
    let body: Value = reqwest::get(format!("{}/sandbox/ledger", sandbox.base_url()))
        .await?
        .json()
        .await?;
    let effect = &body["effects"][0];
    assert_eq!(effect["seq"], 1);
    assert_eq!(effect["provider"], "twilio");
    assert_eq!(effect["action"], "create_subaccount");
    assert_eq!(effect["key"], "org:org_json");
    assert_eq!(effect["id"], account.sid.as_str());
    assert_eq!(effect["status"], 201);
    assert!(chrono_like(effect["at"].as_str().unwrap_or_default()));

    let listed: Value = reqwest::get(format!("{}/sandbox/subaccounts", sandbox.base_url()))
        .await?
        .json()
        .await?;
    assert_eq!(listed["subaccounts"][0]["sid"], account.sid.as_str());
    assert_eq!(listed["subaccounts"][0]["status"], "active");
    Ok(())
}

/// Whether `at` looks like an RFC 3339 UTC timestamp (`2025-01-01T00:00:00.123Z`).
fn chrono_like(at: &str) -> bool {
    at.len() >= 20 && at.as_bytes()[10] == b'T' && at.ends_with('Z')
}

#[tokio::test]
async fn client_debug_output_redacts_credentials() -> TestResult {
    let sandbox = spawn_sandbox(SandboxConfig::default()).await;
    let printed = format!(
        "{:?} {:?} {:?}",
        twilio(&sandbox),
        resend(&sandbox),
        clerk(&sandbox)
    );
    for secret in [
        SandboxConfig::DEV_TWILIO_AUTH_TOKEN,
        SandboxConfig::DEV_RESEND_API_KEY,
        SandboxConfig::DEV_CLERK_SECRET_KEY,
    ] {
        assert!(!printed.contains(secret), "{secret} leaked into {printed}");
    }
    assert!(printed.contains("[REDACTED]"));
    Ok(())
}
