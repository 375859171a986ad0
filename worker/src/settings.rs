//! The worker role's settings: its flags, each also read from its environment variable (the
//! flag wins), validated into [`ProviderSettings`] — the providers' base URLs, credentials and
//! timeout.

use std::time::Duration;

use anyhow::Context;
use reqwest::Url;
use secrecy::SecretString;

use crate::provider::{
    ClerkClient, ClerkConfig, ResendClient, ResendConfig, TwilioClient, TwilioConfig,
};
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

impl ProviderSettings {
    /// Reads the settings from the environment alone (see [`Args`]); missing credentials are
    /// an error naming them.
    pub fn from_env() -> anyhow::Result<Self> {
        Args::from_env()?.provider_settings()
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

/// The worker's flags (DESIGN.md §8). Secrets are `SecretString`: never in `Debug` output.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "worker")]
#[command(next_help_heading = "Worker")]
pub struct Args {
    /// Twilio's API base URL.
    #[arg(
        long,
        env = "TWILIO_BASE_URL",
        value_name = "TWILIO_BASE_URL",
        default_value = "https://api.twilio.com"
    )]
    pub twilio_base_url: String,
    /// The Twilio (parent) account SID.
    #[arg(long, env = "TWILIO_ACCOUNT_SID", value_name = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,
    /// The Twilio auth token.
    #[arg(
        long,
        env = "TWILIO_AUTH_TOKEN",
        value_name = "TWILIO_AUTH_TOKEN",
        hide_env_values = true
    )]
    pub twilio_auth_token: Option<SecretString>,
    /// Resend's API base URL.
    #[arg(
        long,
        env = "RESEND_BASE_URL",
        value_name = "RESEND_BASE_URL",
        default_value = "https://api.resend.com"
    )]
    pub resend_base_url: String,
    /// The Resend API key.
    #[arg(
        long,
        env = "RESEND_API_KEY",
        value_name = "RESEND_API_KEY",
        hide_env_values = true
    )]
    pub resend_api_key: Option<SecretString>,
    /// The welcome email's sender.
    #[arg(
        long,
        env = "EMAIL_FROM",
        value_name = "EMAIL_FROM",
        default_value = "onboarding@example.com"
    )]
    pub email_from: String,
    /// Clerk's Backend API base URL.
    #[arg(
        long,
        env = "CLERK_API_BASE_URL",
        value_name = "CLERK_API_BASE_URL",
        default_value = "https://api.clerk.com"
    )]
    pub clerk_api_base_url: String,
    /// The Clerk secret key.
    #[arg(
        long,
        env = "CLERK_SECRET_KEY",
        value_name = "CLERK_SECRET_KEY",
        hide_env_values = true
    )]
    pub clerk_secret_key: Option<SecretString>,
    /// The whole-call timeout of each provider request, in milliseconds.
    #[arg(
        long,
        env = "ONBOARD_PROVIDER_TIMEOUT_MS",
        value_name = "ONBOARD_PROVIDER_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub provider_timeout_ms: u64,
}

/// [`Args`] as a command of its own, to read the environment alone.
#[derive(Debug, clap::Parser)]
struct FromEnv {
    #[command(flatten)]
    args: Args,
}

impl Args {
    /// Reads the environment alone (no flags).
    pub fn from_env() -> anyhow::Result<Self> {
        <FromEnv as clap::Parser>::try_parse_from(["worker"])
            .map(|parsed| parsed.args)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Validates the values; a missing credential or a bad URL is an error naming its variable.
    pub fn provider_settings(&self) -> anyhow::Result<ProviderSettings> {
        if self.provider_timeout_ms == 0 {
            anyhow::bail!("ONBOARD_PROVIDER_TIMEOUT_MS must be a positive number of milliseconds");
        }
        Ok(ProviderSettings {
            twilio_base_url: url("TWILIO_BASE_URL", &self.twilio_base_url)?,
            twilio_account_sid: required("TWILIO_ACCOUNT_SID", self.twilio_account_sid.as_ref())?,
            twilio_auth_token: required("TWILIO_AUTH_TOKEN", self.twilio_auth_token.as_ref())?,
            resend_base_url: url("RESEND_BASE_URL", &self.resend_base_url)?,
            resend_api_key: required("RESEND_API_KEY", self.resend_api_key.as_ref())?,
            email_from: self.email_from.clone(),
            clerk_base_url: url("CLERK_API_BASE_URL", &self.clerk_api_base_url)?,
            clerk_secret_key: required("CLERK_SECRET_KEY", self.clerk_secret_key.as_ref())?,
            timeout: Duration::from_millis(self.provider_timeout_ms),
        })
    }
}

fn url(name: &str, value: &str) -> anyhow::Result<Url> {
    Url::parse(value).with_context(|| format!("{name} is not a URL"))
}

fn required<T: Clone>(name: &str, value: Option<&T>) -> anyhow::Result<T> {
    value.cloned().with_context(|| format!("{name} is not set"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use secrecy::ExposeSecret;

    use super::*;

    fn args(flags: &[&str]) -> Args {
        let mut argv = vec!["worker"];
        argv.extend_from_slice(flags);
        FromEnv::try_parse_from(argv).unwrap().args
    }

    const CREDENTIALS: [&str; 8] = [
        "--twilio-account-sid",
        "AC1",
        "--twilio-auth-token",
        "twilio-token-secret",
        "--resend-api-key",
        "re_secret",
        "--clerk-secret-key",
        "sk_secret",
    ];

    #[test]
    fn a_missing_credential_names_its_variable() {
        let error = args(&["--twilio-account-sid", "AC1"])
            .provider_settings()
            .unwrap_err();
        assert!(error.to_string().contains("TWILIO_AUTH_TOKEN"), "{error}");
        let error = args(&[&CREDENTIALS[..], &["--resend-base-url", "not a url"]].concat())
            .provider_settings()
            .unwrap_err();
        assert!(error.to_string().contains("RESEND_BASE_URL"), "{error}");
    }

    #[test]
    fn credentials_are_read_and_never_shown_by_debug() {
        let args = args(&CREDENTIALS);
        let settings = args.provider_settings().unwrap();
        assert_eq!(settings.clerk_secret_key.expose_secret(), "sk_secret");
        assert_eq!(settings.timeout, Duration::from_secs(5));
        for debug in [format!("{args:?}"), format!("{settings:?}")] {
            for secret in ["twilio-token-secret", "re_secret", "sk_secret"] {
                assert!(!debug.contains(secret), "{debug}");
            }
        }
    }
}
