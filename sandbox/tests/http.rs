//! The sandbox's wire protocol, checked with a plain HTTP client over loopback.

use reqwest::{Client, StatusCode};
use sandbox::{Action, Sandbox, SandboxConfig};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn spawn() -> Sandbox {
    sandbox::spawn("127.0.0.1:0".parse().unwrap(), SandboxConfig::default())
        .await
        .expect("sandbox starts")
}

fn twilio_auth(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request.basic_auth(
        SandboxConfig::DEV_TWILIO_ACCOUNT_SID,
        Some(SandboxConfig::DEV_TWILIO_AUTH_TOKEN),
    )
}

async fn json_of(response: reqwest::Response) -> Result<(StatusCode, Value), reqwest::Error> {
    let status = response.status();
    Ok((status, response.json().await?))
}

#[tokio::test]
async fn twilio_without_credentials_answers_401_with_the_legacy_error_body() -> TestResult {
    let sandbox = spawn().await;
    let response = Client::new()
        .post(format!("{}/2010-04-01/Accounts.json", sandbox.base_url()))
        .form(&[("FriendlyName", "org:org_1")])
        .send()
        .await?;
    assert!(response.headers().contains_key("www-authenticate"));
    let (status, body) = json_of(response).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!({"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401})
    );
    Ok(())
}

#[tokio::test]
async fn twilio_create_answers_201_with_an_account_and_rfc_2822_dates() -> TestResult {
    let sandbox = spawn().await;
    let (status, body) = json_of(
        twilio_auth(Client::new().post(format!("{}/2010-04-01/Accounts.json", sandbox.base_url())))
            .form(&[("FriendlyName", "org:org_1")])
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED);
    let sid = body["sid"].as_str().unwrap_or_default();
    assert!(
        sid.starts_with("AC") && sid.len() == 34 && sid[2..].chars().all(|c| c.is_ascii_hexdigit())
    );
    assert_eq!(body["friendly_name"], "org:org_1");
    assert_eq!(body["status"], "active");
    assert_eq!(
        body["owner_account_sid"],
        SandboxConfig::DEV_TWILIO_ACCOUNT_SID
    );
    assert_eq!(body["uri"], format!("/2010-04-01/Accounts/{sid}.json"));
    assert!(
        body["auth_token"]
            .as_str()
            .is_some_and(|token| token.len() == 32)
    );
    assert!(
        body["date_created"]
            .as_str()
            .unwrap_or_default()
            .ends_with("+0000")
    );

    let ledger = sandbox.ledger().await;
    assert!(
        !serde_json::to_string(&ledger)?.contains(body["auth_token"].as_str().unwrap_or("?")),
        "credentials never reach the ledger"
    );
    Ok(())
}

#[tokio::test]
async fn twilio_list_is_paginated_with_next_page_uri() -> TestResult {
    let sandbox = spawn().await;
    let client = Client::new();
    for _ in 0..3 {
        twilio_auth(client.post(format!("{}/2010-04-01/Accounts.json", sandbox.base_url())))
            .form(&[("FriendlyName", "org:org page")])
            .send()
            .await?
            .error_for_status()?;
    }
    let (status, first) = json_of(
        twilio_auth(client.get(format!(
            "{}/2010-04-01/Accounts.json?FriendlyName=org%3Aorg+page&Status=active&PageSize=2",
            sandbox.base_url()
        )))
        .send()
        .await?,
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["accounts"].as_array().map(Vec::len), Some(2));
    assert_eq!(first["page"], 0);
    assert_eq!(first["page_size"], 2);
    let next = first["next_page_uri"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(next.starts_with("/2010-04-01/Accounts.json?"), "{next}");

    let (_, second) = json_of(
        twilio_auth(client.get(format!("{}{next}", sandbox.base_url())))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(second["accounts"].as_array().map(Vec::len), Some(1));
    assert_eq!(second["accounts"][0]["friendly_name"], "org:org page");
    assert_eq!(second["next_page_uri"], Value::Null);

    let (status, body) = json_of(
        twilio_auth(client.get(format!(
            "{}/2010-04-01/Accounts.json?Status=sleeping",
            sandbox.base_url()
        )))
        .send()
        .await?,
    )
    .await?;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::BAD_REQUEST, json!(400))
    );
    Ok(())
}

#[tokio::test]
async fn twilio_unknown_account_and_bad_status_get_twilio_errors() -> TestResult {
    let sandbox = spawn().await;
    let client = Client::new();
    let (status, body) = json_of(
        twilio_auth(client.get(format!(
            "{}/2010-04-01/Accounts/ACffffffffffffffffffffffffffffffff.json",
            sandbox.base_url()
        )))
        .send()
        .await?,
    )
    .await?;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::NOT_FOUND, json!(20404))
    );

    let (_, created) = json_of(
        twilio_auth(client.post(format!("{}/2010-04-01/Accounts.json", sandbox.base_url())))
            .form(&[("FriendlyName", "org:org_2")])
            .send()
            .await?,
    )
    .await?;
    let sid = created["sid"].as_str().unwrap_or_default();
    let (status, body) = json_of(
        twilio_auth(client.post(format!(
            "{}/2010-04-01/Accounts/{sid}.json",
            sandbox.base_url()
        )))
        .form(&[("Status", "paused")])
        .send()
        .await?,
    )
    .await?;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::BAD_REQUEST, json!(400))
    );
    let updates: Vec<_> = sandbox
        .ledger()
        .await
        .into_iter()
        .filter(|effect| effect.action == Action::UpdateSubaccount)
        .collect();
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].status, 400);
    Ok(())
}

#[tokio::test]
async fn resend_auth_and_validation_errors_use_resend_bodies() -> TestResult {
    let sandbox = spawn().await;
    let client = Client::new();
    let url = format!("{}/emails", sandbox.base_url());
    let message =
        json!({"from": "a@example.com", "to": "b@example.com", "subject": "s", "text": "t"});

    let (status, body) = json_of(client.post(&url).json(&message).send().await?).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["name"], "missing_api_key");
    assert_eq!(body["statusCode"], 401);

    let (status, body) = json_of(
        client
            .post(&url)
            .bearer_auth("re_other")
            .json(&message)
            .send()
            .await?,
    )
    .await?;
    assert_eq!(
        (status, body["name"].clone()),
        (StatusCode::FORBIDDEN, json!("invalid_api_key"))
    );

    let (status, body) = json_of(
        client
            .post(&url)
            .bearer_auth(SandboxConfig::DEV_RESEND_API_KEY)
            .json(&json!({"from": "a@example.com", "to": ["b@example.com"], "text": "t"}))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["name"], "missing_required_field");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("subject")
    );

    let (status, body) = json_of(
        client
            .post(&url)
            .bearer_auth(SandboxConfig::DEV_RESEND_API_KEY)
            .body("{not json")
            .send()
            .await?,
    )
    .await?;
    assert_eq!(
        (status, body["name"].clone()),
        (StatusCode::BAD_REQUEST, json!("validation_error"))
    );

    let (status, body) = json_of(
        client
            .post(&url)
            .bearer_auth(SandboxConfig::DEV_RESEND_API_KEY)
            .json(&message)
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert!(body["id"].as_str().is_some_and(|id| id.len() == 36));
    Ok(())
}

#[tokio::test]
async fn clerk_errors_use_the_errors_array() -> TestResult {
    let sandbox = spawn().await;
    let client = Client::new();
    let (status, body) = json_of(
        client
            .get(format!("{}/v1/users/user_1", sandbox.base_url()))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errors"][0]["code"], "authentication_invalid");
    assert!(body["errors"][0]["long_message"].is_string());

    let (status, body) = json_of(
        client
            .patch(format!(
                "{}/v1/organizations/org_1/metadata",
                sandbox.base_url()
            ))
            .bearer_auth(SandboxConfig::DEV_CLERK_SECRET_KEY)
            .body("nope")
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errors"][0]["code"], "request_body_invalid");

    let (status, user) = json_of(
        client
            .get(format!("{}/v1/users/user_1", sandbox.base_url()))
            .bearer_auth(SandboxConfig::DEV_CLERK_SECRET_KEY)
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    let primary = user["primary_email_address_id"].clone();
    let addresses = user["email_addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let primary_address = addresses.iter().find(|address| address["id"] == primary);
    assert_eq!(
        primary_address.map(|address| address["email_address"].clone()),
        Some(json!("user_1@example.com"))
    );
    Ok(())
}

#[tokio::test]
async fn unknown_routes_answer_in_the_owning_providers_format() -> TestResult {
    let sandbox = spawn().await;
    let base = sandbox.base_url();
    let (status, body) =
        json_of(reqwest::get(format!("{base}/2010-04-01/Nope.json")).await?).await?;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::NOT_FOUND, json!(20404))
    );
    let (status, body) = json_of(reqwest::get(format!("{base}/v1/nope")).await?).await?;
    assert_eq!(
        (status, body["errors"][0]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("resource_not_found"))
    );
    let (status, body) = json_of(reqwest::get(format!("{base}/emails")).await?).await?;
    assert_eq!(
        (status, body["name"].clone()),
        (StatusCode::METHOD_NOT_ALLOWED, json!("method_not_allowed"))
    );
    let health = reqwest::get(format!("{base}/healthz")).await?;
    assert_eq!(health.status(), StatusCode::OK);
    let (status, body) = json_of(
        Client::new()
            .post(format!("{base}/sandbox/heal"))
            .body("{}")
            .send()
            .await?,
    )
    .await?;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("bad_request"))
    );
    Ok(())
}

#[tokio::test]
async fn shutdown_cuts_a_pending_slow_answer_short() -> TestResult {
    let sandbox = sandbox::spawn(
        "127.0.0.1:0".parse()?,
        SandboxConfig {
            slow_delay: std::time::Duration::from_secs(600),
            ..SandboxConfig::default()
        },
    )
    .await?;
    let url = format!("{}/2010-04-01/Accounts.json", sandbox.base_url());
    let pending = tokio::spawn(async move {
        twilio_auth(Client::new().post(url))
            .form(&[("FriendlyName", "org:org_x-slow-twilio")])
            .send()
            .await
    });
    // The account exists as soon as the request arrives, long before the answer.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while sandbox.subaccounts().await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the create never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    sandbox.shutdown().await;
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), pending).await??;
    assert_eq!(answer?.status(), StatusCode::CREATED);
    Ok(())
}

#[tokio::test]
async fn credentials_from_the_environment_are_accepted_and_the_dev_ones_then_refused() -> TestResult
{
    let env = |name: &str| match name {
        "TWILIO_ACCOUNT_SID" => Some("AC0123456789abcdef0123456789abcdef".to_owned()),
        "TWILIO_AUTH_TOKEN" => Some("env-twilio-token".to_owned()),
        "RESEND_API_KEY" => Some("re_env".to_owned()),
        "CLERK_SECRET_KEY" => Some("sk_live_env".to_owned()),
        _ => None,
    };
    let (config, _) = SandboxConfig::from_vars(env);
    let sandbox = sandbox::spawn("127.0.0.1:0".parse()?, config).await?;
    let base = sandbox.base_url();
    let client = Client::new();
    let create = |sid: &str, token: &str| {
        client
            .post(format!("{base}/2010-04-01/Accounts.json"))
            .basic_auth(sid, Some(token))
            .form(&[("FriendlyName", "org:org_env")])
            .send()
    };
    let user = |key: &str| {
        client
            .get(format!("{base}/v1/users/user_env"))
            .bearer_auth(key)
            .send()
    };
    let email = |key: &str| {
        client
            .post(format!("{base}/emails"))
            .bearer_auth(key)
            .json(&json!({"from": "a@example.com", "to": "b@example.com", "subject": "s", "text": "t"}))
            .send()
    };
    assert_eq!(
        create("AC0123456789abcdef0123456789abcdef", "env-twilio-token")
            .await?
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(user("sk_live_env").await?.status(), StatusCode::OK);
    assert_eq!(email("re_env").await?.status(), StatusCode::OK);
    assert_eq!(
        create(
            SandboxConfig::DEV_TWILIO_ACCOUNT_SID,
            SandboxConfig::DEV_TWILIO_AUTH_TOKEN
        )
        .await?
        .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        user(SandboxConfig::DEV_CLERK_SECRET_KEY).await?.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        email(SandboxConfig::DEV_RESEND_API_KEY).await?.status(),
        StatusCode::FORBIDDEN, // Resend: 403 invalid_api_key
    );
    Ok(())
}
