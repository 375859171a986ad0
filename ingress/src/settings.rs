//! The ingress role's typed configuration, read from environment variables and validated at
//! start. Signing secrets are kept as parsed keys whose `Debug` never shows them.

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
    /// The internal listener: health, readiness, metrics (`ONBOARD_DASHBOARD_ADDR`, default
    /// `127.0.0.1:8081`). `None` when another role serves [`crate::internal_router`] there.
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
        }
    }

    /// Reads the settings from the environment; `CLERK_WEBHOOK_SIGNING_SECRET` is required.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok(), None)
    }

    /// Like [`Settings::from_env`], but uses [`DEV_WEBHOOK_SECRET`] when no secret is set
    /// (`onboard dev`).
    pub fn from_env_for_dev() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok(), Some(DEV_WEBHOOK_SECRET))
    }

    /// Reads the settings through `lookup` (a variable's value, if set), with an optional
    /// fallback secret.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        default_secret: Option<&str>,
    ) -> Result<Self, SettingsError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let secret = match (get(SECRET_VAR), default_secret) {
            (Some(value), _) => SecretString::from(value),
            (None, Some(default)) => SecretString::from(default.to_owned()),
            (None, None) => return Err(SettingsError::Missing(SECRET_VAR)),
        };
        let mut settings = Settings::new(WebhookSecrets::parse(&secret)?);
        if let Some(value) = get("ONBOARD_INGRESS_ADDR") {
            settings.ingress_addr = parse_addr("ONBOARD_INGRESS_ADDR", &value)?;
        }
        if let Some(value) = get("ONBOARD_DASHBOARD_ADDR") {
            settings.dashboard_addr = Some(parse_addr("ONBOARD_DASHBOARD_ADDR", &value)?);
        }
        if let Some(value) = get("ONBOARD_INGRESS_BODY_LIMIT") {
            settings.body_limit =
                value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        invalid(
                            "ONBOARD_INGRESS_BODY_LIMIT",
                            "must be a positive number of bytes",
                        )
                    })?;
        }
        if let Some(value) = get("ONBOARD_INGRESS_DB_TIMEOUT_MS") {
            let millis: u64 = value
                .trim()
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    invalid(
                        "ONBOARD_INGRESS_DB_TIMEOUT_MS",
                        "must be a positive number of milliseconds",
                    )
                })?;
            settings.db_timeout = Duration::from_millis(millis);
        }
        if let Some(value) = get("ONBOARD_INGRESS_NOTIFY_EVERY_MS") {
            let millis: u64 = value
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "ONBOARD_INGRESS_NOTIFY_EVERY_MS",
                        "must be a number of milliseconds from 1 to 1000",
                    )
                })?;
            settings.notify_every = Duration::from_millis(millis);
        }
        settings.public_url = match get("ONBOARD_PUBLIC_URL") {
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

fn invalid(var: &'static str, reason: &str) -> SettingsError {
    SettingsError::Invalid {
        var,
        reason: reason.to_owned(),
    }
}

fn parse_addr(var: &'static str, value: &str) -> Result<SocketAddr, SettingsError> {
    value
        .trim()
        .parse()
        .map_err(|_| invalid(var, "must be an address like 127.0.0.1:8080"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(|name| vars.get(name).cloned(), None)
    }

    #[test]
    fn defaults_apply_when_only_the_secret_is_set() {
        let s = settings(&[(SECRET_VAR, DEV_WEBHOOK_SECRET)]).unwrap();
        assert_eq!(s.ingress_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.dashboard_addr.unwrap().to_string(), "127.0.0.1:8081");
        assert_eq!(s.body_limit, 262_144);
        assert_eq!(s.public_url, "http://127.0.0.1:8080");
        assert_eq!(s.notify_every, Duration::from_millis(5));
    }

    #[test]
    fn the_notify_pacing_is_read_in_milliseconds_and_bounded() {
        let s = settings(&[
            (SECRET_VAR, DEV_WEBHOOK_SECRET),
            ("ONBOARD_INGRESS_NOTIFY_EVERY_MS", "20"),
        ])
        .unwrap();
        assert_eq!(s.notify_every, Duration::from_millis(20));
        for bad in ["0", "1001", "-1", "5ms"] {
            let error = settings(&[
                (SECRET_VAR, DEV_WEBHOOK_SECRET),
                ("ONBOARD_INGRESS_NOTIFY_EVERY_MS", bad),
            ])
            .unwrap_err();
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
        let s = settings(&[(SECRET_VAR, &value)]).unwrap();
        assert_eq!(s.webhook_secrets.keys().len(), 2);
    }

    #[test]
    fn a_bad_secret_names_the_variable_and_never_shows_the_secret() {
        let secret = "whsec_not*base64";
        let error =
            settings(&[(SECRET_VAR, &format!("{DEV_WEBHOOK_SECRET} {secret}"))]).unwrap_err();
        let text = error.to_string();
        assert!(text.contains(SECRET_VAR) && text.contains("#2"), "{text}");
        assert!(!text.contains("not*base64") && !format!("{error:?}").contains("not*base64"));
        assert!(matches!(
            settings(&[(SECRET_VAR, "whsec_")]),
            Err(SettingsError::Invalid { .. })
        ));
        assert!(matches!(
            settings(&[]),
            Err(SettingsError::Missing(SECRET_VAR))
        ));
    }

    #[test]
    fn debug_output_redacts_the_secrets() {
        let s = settings(&[(SECRET_VAR, DEV_WEBHOOK_SECRET)]).unwrap();
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("ZGV2LW9ubHktb25ib2FyZC13ZWJob29rLXNlY3JldA"),
            "{debug}"
        );
    }

    #[test]
    fn a_bad_address_names_its_variable() {
        let error = settings(&[
            (SECRET_VAR, DEV_WEBHOOK_SECRET),
            ("ONBOARD_INGRESS_ADDR", "nope"),
        ])
        .unwrap_err();
        assert!(error.to_string().contains("ONBOARD_INGRESS_ADDR"));
    }
}
