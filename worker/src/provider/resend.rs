//! Resend's emails API client: `POST /emails` with an `Idempotency-Key`, which Resend honours for
//! 24 hours (same key and payload → the same id, no second email). Callers keep their own
//! `sent_at` marker for anything older (`reference/protocols.md` §7.1).

use std::time::Duration;

use reqwest::Url;
use reqwest::header::HeaderValue;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::error::{ProviderError, SetupError};
use super::http::{self, Idempotence};

const PROVIDER: &str = "resend";
/// Longest `Idempotency-Key` Resend accepts, in characters.
const MAX_IDEMPOTENCY_KEY: usize = 256;

/// Where and with which key the Resend client calls.
#[derive(Clone)]
pub struct ResendConfig {
    /// `https://api.resend.com`, or the sandbox's base URL.
    pub base_url: Url,
    /// The API key (`re_…`), sent as `Authorization: Bearer`.
    pub api_key: SecretString,
    /// Whole-call timeout; [`super::DEFAULT_TIMEOUT`] by default.
    pub timeout: Duration,
}

impl ResendConfig {
    /// A config with the default timeout.
    pub fn new(base_url: Url, api_key: SecretString) -> Self {
        Self {
            base_url,
            api_key,
            timeout: super::DEFAULT_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for ResendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResendConfig")
            .field("base_url", &self.base_url.as_str())
            .field("api_key", &"[REDACTED]")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// One email to send: a sender, recipients, a subject and an HTML and/or text body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    /// `hello@example.com` or `Name <hello@example.com>`.
    pub from: String,
    /// Recipients (at most 50).
    pub to: Vec<String>,
    /// Subject line.
    pub subject: String,
    /// HTML body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Plain-text body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Deserialize)]
struct Sent {
    id: String,
}

/// Client of Resend's emails API; cheap to clone, safe to share.
#[derive(Clone)]
pub struct ResendClient {
    http: reqwest::Client,
    config: ResendConfig,
    authorization: HeaderValue,
}

impl std::fmt::Debug for ResendClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResendClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ResendClient {
    /// A client with its own connection pool.
    pub fn new(config: ResendConfig) -> Result<Self, SetupError> {
        let http = http::build_client(config.timeout)?;
        Self::with_http(http, config)
    }

    /// A client sharing `http`'s connection pool (build it without redirects).
    pub fn with_http(http: reqwest::Client, config: ResendConfig) -> Result<Self, SetupError> {
        http::check_base_url(&config.base_url, "Resend")?;
        let authorization = http::bearer(&config.api_key, "RESEND_API_KEY")?;
        Ok(Self {
            http,
            config,
            authorization,
        })
    }

    /// Sends `email` under `idempotency_key` (1–256 characters, e.g. `welcome/<org>/<user>`) and
    /// answers Resend's email id. Retrying with the same key within 24 h never sends twice, so
    /// timeouts and 5xx are [`ProviderError::Retryable`].
    pub async fn send_email(
        &self,
        email: &Email,
        idempotency_key: &str,
    ) -> Result<String, ProviderError> {
        let key = HeaderValue::from_str(idempotency_key)
            .ok()
            .filter(|_| {
                !idempotency_key.is_empty()
                    && idempotency_key.chars().count() <= MAX_IDEMPOTENCY_KEY
            })
            .ok_or_else(|| ProviderError::Permanent {
                status: 400,
                code: Some("invalid_idempotency_key".to_owned()),
                message: format!(
                    "{PROVIDER}: the idempotency key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                ),
            })?;
        let url = http::endpoint(&self.config.base_url, &["emails"]);
        let response = http::send(PROVIDER, "send_email", Idempotence::Idempotent, || {
            self.http
                .post(url.clone())
                .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
                .header("Idempotency-Key", key.clone())
                .json(email)
                .timeout(self.config.timeout)
        })
        .await?;
        let sent: Sent = http::read_json(PROVIDER, Idempotence::Idempotent, response).await?;
        Ok(sent.id)
    }
}
