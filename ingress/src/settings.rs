//! The ingress role's typed configuration: [`Args`] reads every value from a flag or its
//! environment variable (the flag wins) and [`Args::settings`] validates them into
//! [`Settings`]. Signing secrets are kept as parsed keys whose `Debug` never shows them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// The fixed webhook secret `onboard dev` uses unless one is configured (DESIGN.md §8).
pub const DEV_WEBHOOK_SECRET: &str = "whsec_ZGV2LW9ubHktb25ib2FyZC13ZWJob29rLXNlY3JldA==";

/// The environment variable holding the Clerk webhook signing secrets.
pub const SECRET_VAR: &str = "CLERK_WEBHOOK_SIGNING_SECRET";

/// A configuration error. It names the variable and never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A required variable is unset or empty.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// The flags or the environment could not be read (the message names the variable).
    #[error("{0}")]
    Parse(String),
    /// A variable's value is not usable.
    #[error("{var} is invalid: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// What is wrong (never the value itself when it is a secret).
        reason: String,
    },
}

/// One or more Clerk (Svix) signing secrets: a delivery verifies if any of them signed it, so
/// old and new secrets both work during a rotation.
#[derive(Clone)]
pub struct WebhookSecrets(Arc<[svix::webhooks::Webhook]>);

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSecrets([redacted; {}])", self.0.len())
    }
}

impl WebhookSecrets {
    /// Parses space-separated `whsec_…` secrets (the prefix is optional; standard base64).
    /// Errors say which secret (by position) is wrong, never its value.
    pub fn parse(value: &SecretString) -> Result<Self, SettingsError> {
        let mut keys = Vec::new();
        for (index, secret) in value.expose_secret().split_whitespace().enumerate() {
            let reason = match svix::webhooks::Webhook::new(secret) {
                Ok(key) => {
                    keys.push(key);
                    continue;
                }
                Err(svix::webhooks::WebhookError::EmptySecret) => "is empty",
                Err(_) => "is not `whsec_` followed by standard base64 (with padding)",
            };
            return Err(SettingsError::Invalid {
                var: SECRET_VAR,
                reason: format!("secret #{} {reason}", index + 1),
            });
        }
        if keys.is_empty() {
            return Err(SettingsError::Missing(SECRET_VAR));
        }
        Ok(WebhookSecrets(keys.into()))
    }

    /// The parsed keys.
    pub(crate) fn keys(&self) -> &[svix::webhooks::Webhook] {
        &self.0
    }
}

/// The ingress role's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Secrets that may sign Clerk deliveries (`CLERK_WEBHOOK_SIGNING_SECRET`).
    pub webhook_secrets: WebhookSecrets,
    /// The public listener (`ONBOARD_INGRESS_ADDR`, default `127.0.0.1:8080`; port 0 = any).
    pub ingress_addr: SocketAddr,
    /// An internal listener of this ingress's own (health, readiness, metrics). `None` when
    /// the process serves one for all its roles (`onboard` binds `ONBOARD_DASHBOARD_ADDR`).
    pub dashboard_addr: Option<SocketAddr>,
    /// Largest request body in bytes (`ONBOARD_INGRESS_BODY_LIMIT`, default 262144 = 256 KiB).
    pub body_limit: usize,
    /// Base of the status URLs the API returns (`ONBOARD_PUBLIC_URL`, default
    /// `http://<ingress_addr>`), without a trailing `/`.
    pub public_url: String,
    /// How long a request may wait on the database before it answers `503`
    /// (`ONBOARD_INGRESS_DB_TIMEOUT_MS`, default 1500 ms; Svix gives up at 15 s).
    pub db_timeout: Duration,
    /// The shortest interval between two wake-ups (NOTIFYs) of one queue for the jobs stored
    /// deliveries enqueue (`ONBOARD_INGRESS_NOTIFY_EVERY_MS`, default 5 ms): see
    /// [`jobs::notify::Coalescer`].
    pub notify_every: Duration,
    /// A connection whose request headers are not all in within this is closed
    /// (`ONBOARD_INGRESS_HEADER_TIMEOUT_MS`, default 10 s).
    pub header_timeout: Duration,
    /// A request not answered within this, body included, gets `408`
    /// (`ONBOARD_INGRESS_REQUEST_TIMEOUT_MS`, default 15 s: Svix's own limit per attempt).
    pub request_timeout: Duration,
}

impl Settings {
    /// Settings with `secrets` and every other value at its default.
    pub fn new(webhook_secrets: WebhookSecrets) -> Self {
        let ingress_addr = SocketAddr::from(([127, 0, 0, 1], 8080));
        Settings {
            webhook_secrets,
            ingress_addr,
            dashboard_addr: Some(SocketAddr::from(([127, 0, 0, 1], 8081))),
            body_limit: 256 * 1024,
            public_url: format!("http://{ingress_addr}"),
            db_timeout: Duration::from_millis(1500),
            notify_every: jobs::notify::DEFAULT_EVERY,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
        }
    }

    /// Reads the settings from the environment alone; `CLERK_WEBHOOK_SIGNING_SECRET` is
    /// required.
    pub fn from_env() -> Result<Self, SettingsError> {
        Args::from_env()?.settings(None)
    }

    /// Like [`Settings::from_env`], but uses [`DEV_WEBHOOK_SECRET`] when no secret is set, and
    /// serves the process's internal listener on `ONBOARD_DASHBOARD_ADDR` (`onboard dev`).
    pub fn from_env_for_dev() -> Result<Self, SettingsError> {
        let dev = <DevFromEnv as clap::Parser>::try_parse_from(["dev"])
            .map_err(|e| SettingsError::Parse(e.to_string()))?;
        let mut settings = dev.args.settings(Some(DEV_WEBHOOK_SECRET))?;
        settings.dashboard_addr = Some(dev.dashboard_addr);
        Ok(settings)
    }
}

/// The ingress's flags, each also read from its environment variable (the flag wins).
#[derive(Debug, Clone, clap::Args)]
#[group(id = "ingress")]
#[command(next_help_heading = "Ingress")]
pub struct Args {
    /// Clerk's webhook signing secrets: one or more space-separated `whsec_…` (rotation).
    #[arg(long, env = SECRET_VAR, value_name = SECRET_VAR, hide_env_values = true)]
    pub webhook_secret: Option<SecretString>,
    /// The public listener's address (port 0: any free port).
    #[arg(
        long,
        env = "ONBOARD_INGRESS_ADDR",
        value_name = "ONBOARD_INGRESS_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub ingress_addr: SocketAddr,
    /// The largest request body, in bytes.
    #[arg(
        long,
        env = "ONBOARD_INGRESS_BODY_LIMIT",
        value_name = "ONBOARD_INGRESS_BODY_LIMIT",
        default_value_t = 262_144
    )]
    pub body_limit: usize,
    /// How long a request may wait on the database before it answers 503, in milliseconds.
    #[arg(
        long,
        env = "ONBOARD_INGRESS_DB_TIMEOUT_MS",
        value_name = "ONBOARD_INGRESS_DB_TIMEOUT_MS",
        default_value_t = 1500
    )]
    pub db_timeout_ms: u64,
    /// The shortest interval between two wake-ups of one queue, in milliseconds (1 to 1000).
    #[arg(
        long,
        env = "ONBOARD_INGRESS_NOTIFY_EVERY_MS",
        value_name = "ONBOARD_INGRESS_NOTIFY_EVERY_MS",
        default_value_t = 5
    )]
    pub notify_every_ms: u64,
    /// How long a client may take to send its request headers, in milliseconds.
    #[arg(
        long,
        env = "ONBOARD_INGRESS_HEADER_TIMEOUT_MS",
        value_name = "ONBOARD_INGRESS_HEADER_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub header_timeout_ms: u64,
    /// How long a whole request may take before it is answered 408, in milliseconds.
    #[arg(
        long,
        env = "ONBOARD_INGRESS_REQUEST_TIMEOUT_MS",
        value_name = "ONBOARD_INGRESS_REQUEST_TIMEOUT_MS",
        default_value_t = 15_000
    )]
    pub request_timeout_ms: u64,
    /// The base of the status URLs the API returns (default `http://<ingress addr>`).
    #[arg(long, env = "ONBOARD_PUBLIC_URL", value_name = "ONBOARD_PUBLIC_URL")]
    pub public_url: Option<String>,
}

/// [`Args`] as a command of its own, to read the environment alone.
#[derive(Debug, clap::Parser)]
struct FromEnv {
    #[command(flatten)]
    args: Args,
}

/// `onboard dev`'s reading of the environment: the ingress's variables and the internal
/// listener's address.
#[derive(Debug, clap::Parser)]
struct DevFromEnv {
    #[command(flatten)]
    args: Args,
    #[arg(long, env = "ONBOARD_DASHBOARD_ADDR", default_value = "127.0.0.1:8081")]
    dashboard_addr: SocketAddr,
}

impl Args {
    /// Reads the environment alone (no flags).
    pub fn from_env() -> Result<Self, SettingsError> {
        <FromEnv as clap::Parser>::try_parse_from(["ingress"])
            .map(|parsed| parsed.args)
            .map_err(|e| SettingsError::Parse(e.to_string()))
    }

    /// Validates the values; `default_secret` stands in when no secret is configured.
    /// The process's internal listener is not the ingress's: `dashboard_addr` is `None`.
    pub fn settings(&self, default_secret: Option<&str>) -> Result<Settings, SettingsError> {
        let secret = match (&self.webhook_secret, default_secret) {
            (Some(value), _) if !value.expose_secret().trim().is_empty() => value.clone(),
            (_, Some(default)) => SecretString::from(default),
            _ => return Err(SettingsError::Missing(SECRET_VAR)),
        };
        let mut settings = Settings::new(WebhookSecrets::parse(&secret)?);
        settings.ingress_addr = self.ingress_addr;
        settings.dashboard_addr = None;
        if self.body_limit == 0 {
            return Err(invalid(
                "ONBOARD_INGRESS_BODY_LIMIT",
                "must be a positive number of bytes",
            ));
        }
        settings.body_limit = self.body_limit;
        settings.db_timeout = positive_ms("ONBOARD_INGRESS_DB_TIMEOUT_MS", self.db_timeout_ms)?;
        if !(1..=1000).contains(&self.notify_every_ms) {
            return Err(invalid(
                "ONBOARD_INGRESS_NOTIFY_EVERY_MS",
                "must be a number of milliseconds from 1 to 1000",
            ));
        }
        settings.notify_every = Duration::from_millis(self.notify_every_ms);
        settings.header_timeout =
            positive_ms("ONBOARD_INGRESS_HEADER_TIMEOUT_MS", self.header_timeout_ms)?;
        settings.request_timeout = positive_ms(
            "ONBOARD_INGRESS_REQUEST_TIMEOUT_MS",
            self.request_timeout_ms,
        )?;
        settings.public_url = match self.public_url.as_deref().map(str::trim) {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                url.trim_end_matches('/').to_owned()
            }
            Some(_) => {
                return Err(invalid(
                    "ONBOARD_PUBLIC_URL",
                    "must start with http:// or https://",
                ));
            }
            None => format!("http://{}", settings.ingress_addr),
        };
        Ok(settings)
    }
}

fn positive_ms(var: &'static str, millis: u64) -> Result<Duration, SettingsError> {
    if millis == 0 {
        return Err(invalid(var, "must be a positive number of milliseconds"));
    }
    Ok(Duration::from_millis(millis))
}

fn invalid(var: &'static str, reason: &str) -> SettingsError {
    SettingsError::Invalid {
        var,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// Parses flags alone (the test environment sets none of the variables).
    fn settings(flags: &[&str]) -> Result<Settings, SettingsError> {
        let mut argv = vec!["ingress"];
        argv.extend_from_slice(flags);
        FromEnv::try_parse_from(argv)
            .map_err(|e| SettingsError::Parse(e.to_string()))?
            .args
            .settings(None)
    }

    #[test]
    fn defaults_apply_when_only_the_secret_is_set() {
        let s = settings(&["--webhook-secret", DEV_WEBHOOK_SECRET]).unwrap();
        assert_eq!(s.ingress_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.dashboard_addr, None);
        assert_eq!(s.body_limit, 262_144);
        assert_eq!(s.public_url, "http://127.0.0.1:8080");
        assert_eq!(s.notify_every, Duration::from_millis(5));
        assert_eq!(s.header_timeout, Duration::from_secs(10));
        assert_eq!(s.request_timeout, Duration::from_secs(15));
    }

    #[test]
    fn the_notify_pacing_is_read_in_milliseconds_and_bounded() {
        let s = settings(&[
            "--webhook-secret",
            DEV_WEBHOOK_SECRET,
            "--notify-every-ms",
            "20",
        ])
        .unwrap();
        assert_eq!(s.notify_every, Duration::from_millis(20));
        for bad in ["0", "1001", "-1", "5ms"] {
            let flag = format!("--notify-every-ms={bad}");
            let error = settings(&["--webhook-secret", DEV_WEBHOOK_SECRET, &flag]).unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains("ONBOARD_INGRESS_NOTIFY_EVERY_MS"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn several_space_separated_secrets_are_accepted() {
        let value = format!("{DEV_WEBHOOK_SECRET}  whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let s = settings(&["--webhook-secret", &value]).unwrap();
        assert_eq!(s.webhook_secrets.keys().len(), 2);
    }

    #[test]
    fn a_bad_secret_names_the_variable_and_never_shows_the_secret() {
        let secret = "whsec_not*base64";
        let error = settings(&[
            "--webhook-secret",
            &format!("{DEV_WEBHOOK_SECRET} {secret}"),
        ])
        .unwrap_err();
        let text = error.to_string();
        assert!(text.contains(SECRET_VAR) && text.contains("#2"), "{text}");
        assert!(!text.contains("not*base64") && !format!("{error:?}").contains("not*base64"));
        assert!(matches!(
            settings(&["--webhook-secret", "whsec_"]),
            Err(SettingsError::Invalid { .. })
        ));
        assert!(matches!(
            settings(&[]),
            Err(SettingsError::Missing(SECRET_VAR))
        ));
    }

    #[test]
    fn debug_output_redacts_the_secrets() {
        let args = FromEnv::try_parse_from(["ingress", "--webhook-secret", DEV_WEBHOOK_SECRET])
            .unwrap()
            .args;
        let s = args.settings(None).unwrap();
        for debug in [format!("{s:?}"), format!("{args:?}")] {
            assert!(
                !debug.contains("ZGV2LW9ubHktb25ib2FyZC13ZWJob29rLXNlY3JldA"),
                "{debug}"
            );
        }
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (flag, value, var) in [
            ("--ingress-addr", "nope", "ONBOARD_INGRESS_ADDR"),
            ("--body-limit", "0", "ONBOARD_INGRESS_BODY_LIMIT"),
            (
                "--header-timeout-ms",
                "0",
                "ONBOARD_INGRESS_HEADER_TIMEOUT_MS",
            ),
            ("--public-url", "ftp://x", "ONBOARD_PUBLIC_URL"),
        ] {
            let error =
                settings(&["--webhook-secret", DEV_WEBHOOK_SECRET, flag, value]).unwrap_err();
            assert!(error.to_string().contains(var), "{flag}: {error}");
        }
    }
}
