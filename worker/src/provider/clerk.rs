//! Clerk Backend API client for the two calls onboarding makes: `GET /v1/users/{id}` (the
//! creator's primary email when no other source has it) and
//! `PATCH /v1/organizations/{id}/metadata` (merge the saga's outcome into `public_metadata`).

use std::time::Duration;

use reqwest::Url;
use reqwest::header::HeaderValue;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::{ProviderError, SetupError};
use super::http::{self, Idempotence};

const PROVIDER: &str = "clerk";

/// Where and with which secret key the Clerk client calls.
#[derive(Clone)]
pub struct ClerkConfig {
    /// `https://api.clerk.com` (the client adds `/v1`), or the sandbox's base URL.
    pub base_url: Url,
    /// The secret key (`sk_…`), sent as `Authorization: Bearer`.
    pub secret_key: SecretString,
    /// Whole-call timeout; [`super::DEFAULT_TIMEOUT`] by default.
    pub timeout: Duration,
}

impl ClerkConfig {
    /// A config with the default timeout.
    pub fn new(base_url: Url, secret_key: SecretString) -> Self {
        Self {
            base_url,
            secret_key,
            timeout: super::DEFAULT_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for ClerkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClerkConfig")
            .field("base_url", &self.base_url.as_str())
            .field("secret_key", &"[REDACTED]")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The parts of a Clerk user onboarding uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClerkUser {
    /// `user_…`.
    pub id: String,
    /// The `email_addresses` entry whose id is `primary_email_address_id`, if any.
    pub primary_email: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// Username, when the instance uses them.
    pub username: Option<String>,
}

#[derive(Deserialize)]
struct RawEmailAddress {
    id: String,
    email_address: String,
}

#[derive(Deserialize)]
struct RawUser {
    id: String,
    #[serde(default)]
    primary_email_address_id: Option<String>,
    #[serde(default)]
    email_addresses: Vec<RawEmailAddress>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

impl From<RawUser> for ClerkUser {
    fn from(raw: RawUser) -> Self {
        let primary_email = raw.primary_email_address_id.and_then(|primary| {
            raw.email_addresses
                .into_iter()
                .find(|address| address.id == primary)
                .map(|address| address.email_address)
        });
        Self {
            id: raw.id,
            primary_email,
            first_name: raw.first_name,
            last_name: raw.last_name,
            username: raw.username,
        }
    }
}

/// Client of Clerk's Backend API; cheap to clone, safe to share.
#[derive(Clone)]
pub struct ClerkClient {
    http: reqwest::Client,
    config: ClerkConfig,
    authorization: HeaderValue,
}

impl std::fmt::Debug for ClerkClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClerkClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ClerkClient {
    /// A client with its own connection pool.
    pub fn new(config: ClerkConfig) -> Result<Self, SetupError> {
        let http = http::build_client(config.timeout)?;
        Self::with_http(http, config)
    }

    /// A client sharing `http`'s connection pool (build it without redirects).
    pub fn with_http(http: reqwest::Client, config: ClerkConfig) -> Result<Self, SetupError> {
        http::check_base_url(&config.base_url, "Clerk")?;
        let authorization = http::bearer(&config.secret_key, "CLERK_SECRET_KEY")?;
        Ok(Self {
            http,
            config,
            authorization,
        })
    }

    fn request(&self, method: reqwest::Method, segments: &[&str]) -> reqwest::RequestBuilder {
        let mut path = vec!["v1"];
        path.extend_from_slice(segments);
        self.http
            .request(method, http::endpoint(&self.config.base_url, &path))
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .timeout(self.config.timeout)
    }

    /// The user `user_id`; an unknown one is `Permanent` 404 (`resource_not_found`).
    pub async fn get_user(&self, user_id: &str) -> Result<ClerkUser, ProviderError> {
        let response = http::send(PROVIDER, "get_user", Idempotence::Idempotent, || {
            self.request(reqwest::Method::GET, &["users", user_id])
        })
        .await?;
        let raw: RawUser = http::read_json(PROVIDER, Idempotence::Idempotent, response).await?;
        Ok(raw.into())
    }

    /// Deep-merges `metadata` (a JSON object; `null` values delete keys) into the org's
    /// `public_metadata`. Idempotent: merging the same object twice changes nothing.
    pub async fn merge_org_public_metadata(
        &self,
        org_id: &str,
        metadata: Value,
    ) -> Result<(), ProviderError> {
        let body = json!({ "public_metadata": metadata });
        let response = http::send(
            PROVIDER,
            "update_org_metadata",
            Idempotence::Idempotent,
            || {
                self.request(
                    reqwest::Method::PATCH,
                    &["organizations", org_id, "metadata"],
                )
                .json(&body)
            },
        )
        .await?;
        let _organization: Value =
            http::read_json(PROVIDER, Idempotence::Idempotent, response).await?;
        Ok(())
    }
}
