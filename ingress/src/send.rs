//! `onboard send`: sign a file's exact bytes the way Svix does and POST them to an ingress;
//! [`event`] makes realistic Clerk events to send.

pub mod event;

use anyhow::Context;

/// Where `onboard dev` listens for Clerk webhooks.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080/webhooks/clerk";

/// The `svix-signature` value (`v1,<base64>`) for `body` sent as message `id` at `timestamp`,
/// signed with `secret` (`whsec_…`) by the `svix` crate.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> anyhow::Result<String> {
    // The crate's errors never include the secret.
    let key = svix::webhooks::Webhook::new(secret)
        .map_err(|e| anyhow::anyhow!("the webhook secret is invalid: {e}"))?;
    key.sign(id, timestamp, body)
        .map_err(|e| anyhow::anyhow!("cannot sign the body: {e}"))
}

/// A fresh Svix-style message id (`msg_…`).
pub fn new_message_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

/// Signs `body` exactly as given and POSTs it to `url` with the `svix-*` headers. `id`
/// defaults to a fresh `msg_…`, `timestamp` to now. Returns the status and response body.
pub async fn send_event(
    url: &str,
    secret: &str,
    body: &[u8],
    id: Option<String>,
    timestamp: Option<i64>,
) -> anyhow::Result<(u16, String)> {
    let id = id.unwrap_or_else(new_message_id);
    let timestamp = timestamp.unwrap_or_else(|| crate::signature::Clock::system().now());
    let signature = sign(secret, &id, timestamp, body)?;
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?
        .post(url)
        .header("content-type", "application/json")
        .header("svix-id", &id)
        .header("svix-timestamp", timestamp.to_string())
        .header("svix-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status().as_u16();
    let text = response.text().await.context("reading the response")?;
    Ok((status, text))
}
