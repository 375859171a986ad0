//! The worker as deployed: provider settings from the environment (DESIGN.md §8) and the
//! registry of every job kind this service runs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use reqwest::Url;
use secrecy::SecretString;
use sqlx::PgPool;

use crate::provider::{
    ClerkClient, ClerkConfig, DEFAULT_TIMEOUT, ResendClient, ResendConfig, TwilioClient,
    TwilioConfig,
};
use crate::runtime::Registry;
use crate::saga::Providers;

/// Where the providers are and how to authenticate. Secrets are never printed.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// `TWILIO_BASE_URL` (default `https://api.twilio.com`).
    pub twilio_base_url: Url,
    /// `TWILIO_ACCOUNT_SID`.
    pub twilio_account_sid: String,
    /// `TWILIO_AUTH_TOKEN`.
    pub twilio_auth_token: SecretString,
    /// `RESEND_BASE_URL` (default `https://api.resend.com`).
    pub resend_base_url: Url,
    /// `RESEND_API_KEY`.
    pub resend_api_key: SecretString,
    /// `EMAIL_FROM`.
    pub email_from: String,
    /// `CLERK_API_BASE_URL` (default `https://api.clerk.com`).
    pub clerk_base_url: Url,
    /// `CLERK_SECRET_KEY`.
    pub clerk_secret_key: SecretString,
    /// Whole-call timeout of each provider request (`ONBOARD_PROVIDER_TIMEOUT_MS`, default 5 s).
    pub timeout: Duration,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn url(name: &str, default: &str) -> anyhow::Result<Url> {
    let value = var(name).unwrap_or_else(|| default.to_owned());
    Url::parse(&value).with_context(|| format!("{name} is not a URL"))
}

fn required(name: &str) -> anyhow::Result<String> {
    var(name).with_context(|| format!("{name} is not set"))
}

impl ProviderSettings {
    /// Reads the settings from the environment; missing credentials are an error naming them.
    pub fn from_env() -> anyhow::Result<Self> {
        let timeout = var("ONBOARD_PROVIDER_TIMEOUT_MS")
            .map(|ms| ms.parse::<u64>().map(Duration::from_millis))
            .transpose()
            .context("ONBOARD_PROVIDER_TIMEOUT_MS is not a number of milliseconds")?
            .unwrap_or(DEFAULT_TIMEOUT);
        Ok(ProviderSettings {
            twilio_base_url: url("TWILIO_BASE_URL", "https://api.twilio.com")?,
            twilio_account_sid: required("TWILIO_ACCOUNT_SID")?,
            twilio_auth_token: required("TWILIO_AUTH_TOKEN")?.into(),
            resend_base_url: url("RESEND_BASE_URL", "https://api.resend.com")?,
            resend_api_key: required("RESEND_API_KEY")?.into(),
            email_from: var("EMAIL_FROM").unwrap_or_else(|| "onboarding@example.com".into()),
            clerk_base_url: url("CLERK_API_BASE_URL", "https://api.clerk.com")?,
            clerk_secret_key: required("CLERK_SECRET_KEY")?.into(),
            timeout,
        })
    }

    /// Every provider at one base URL (the sandbox), with these credentials.
    pub fn on_one_host(
        base_url: &str,
        twilio_account_sid: &str,
        twilio_auth_token: &str,
        resend_api_key: &str,
        clerk_secret_key: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let base = Url::parse(base_url).with_context(|| format!("{base_url} is not a URL"))?;
        Ok(ProviderSettings {
            twilio_base_url: base.clone(),
            twilio_account_sid: twilio_account_sid.to_owned(),
            twilio_auth_token: twilio_auth_token.to_owned().into(),
            resend_base_url: base.clone(),
            resend_api_key: resend_api_key.to_owned().into(),
            email_from: "Onboard <onboarding@example.com>".into(),
            clerk_base_url: base,
            clerk_secret_key: clerk_secret_key.to_owned().into(),
            timeout,
        })
    }

    /// Builds the clients.
    pub fn providers(&self) -> anyhow::Result<Providers> {
        let mut twilio = TwilioConfig::new(
            self.twilio_base_url.clone(),
            self.twilio_account_sid.clone(),
            self.twilio_auth_token.clone(),
        );
        twilio.timeout = self.timeout;
        let mut resend =
            ResendConfig::new(self.resend_base_url.clone(), self.resend_api_key.clone());
        resend.timeout = self.timeout;
        let mut clerk =
            ClerkConfig::new(self.clerk_base_url.clone(), self.clerk_secret_key.clone());
        clerk.timeout = self.timeout;
        Ok(Providers {
            twilio: TwilioClient::new(twilio)?,
            resend: ResendClient::new(resend)?,
            clerk: ClerkClient::new(clerk)?,
            email_from: self.email_from.clone(),
        })
    }
}

/// Every job kind of the service: the onboarding saga and the Clerk event handlers.
pub fn registry(pool: PgPool, providers: Providers) -> Registry {
    // The saga registers last: its `clerk.organization.created` handler (start the saga) is
    // the one that must win over the directory's handler of the same kind.
    let registry = crate::handlers::clerk::register(Registry::default(), pool.clone());
    crate::saga::register(registry, pool, Arc::new(providers))
}

/// Sets the per-queue caps the providers need (Resend allows 2 requests/s per team), unless
/// an operator has set that queue's caps: theirs survive restarts.
pub async fn configure_queues(pool: &PgPool) -> Result<(), sqlx::Error> {
    jobs::admin::set_default_limits(pool, onboarding::saga::EMAIL_QUEUE, None, Some(2.0)).await
}
