//! The worker role's flags, each also read from its environment variable (the flag wins):
//! the providers' base URLs, credentials and timeout, validated into
//! [`ProviderSettings`](crate::app::ProviderSettings).

use std::time::Duration;

use anyhow::Context;
use reqwest::Url;
use secrecy::SecretString;

use crate::app::ProviderSettings;

/// The worker's flags (DESIGN.md §8). Secrets are `SecretString`: never in `Debug` output.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Twilio's API base URL.
    #[arg(long, env = "TWILIO_BASE_URL", value_name = "TWILIO_BASE_URL", default_value = "https://api.twilio.com")]
    pub twilio_base_url: String,
    /// The Twilio (parent) account SID.
    #[arg(long, env = "TWILIO_ACCOUNT_SID", value_name = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,
    /// The Twilio auth token.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", value_name = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<SecretString>,
    /// Resend's API base URL.
    #[arg(long, env = "RESEND_BASE_URL", value_name = "RESEND_BASE_URL", default_value = "https://api.resend.com")]
    pub resend_base_url: String,
    /// The Resend API key.
    #[arg(long, env = "RESEND_API_KEY", value_name = "RESEND_API_KEY", hide_env_values = true)]
    pub resend_api_key: Option<SecretString>,
    /// The welcome email's sender.
    #[arg(long, env = "EMAIL_FROM", value_name = "EMAIL_FROM", default_value = "onboarding@example.com")]
    pub email_from: String,
    /// Clerk's Backend API base URL.
    #[arg(long, env = "CLERK_API_BASE_URL", value_name = "CLERK_API_BASE_URL", default_value = "https://api.clerk.com")]
    pub clerk_api_base_url: String,
    /// The Clerk secret key.
    #[arg(long, env = "CLERK_SECRET_KEY", value_name = "CLERK_SECRET_KEY", hide_env_values = true)]
    pub clerk_secret_key: Option<SecretString>,
    /// The whole-call timeout of each provider request, in milliseconds.
    #[arg(long, env = "ONBOARD_PROVIDER_TIMEOUT_MS", value_name = "ONBOARD_PROVIDER_TIMEOUT_MS", default_value_t = 5_000)]
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
