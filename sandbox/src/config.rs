//! What the sandbox accepts — credentials from the environment or its fixed dev ones — and where
//! it, as Clerk's emulator, learns organizations' slugs for slug magic.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Looks up the slug of a Clerk organization id; `None` when unknown.
pub type SlugLookup =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Option<String>> + Send>> + Send + Sync>;

/// Credentials the sandbox accepts, the delay of `-slow-twilio` answers, and its org directory.
#[derive(Clone)]
pub struct SandboxConfig {
    /// How long a `-slow-twilio` create waits before answering (the account exists at once).
    pub slow_delay: Duration,
    /// The main Twilio account SID (Basic auth user name); `AC` + 32 characters.
    pub twilio_account_sid: String,
    /// The main Twilio auth token (Basic auth password).
    pub twilio_auth_token: String,
    /// The Resend API key expected as `Authorization: Bearer <key>`.
    pub resend_api_key: String,
    /// The Clerk secret key expected as `Authorization: Bearer <key>`.
    pub clerk_secret_key: String,
    /// Where the sandbox, playing Clerk, reads an organization's slug when a Twilio create names
    /// `org:<id>` (the worker never sends the slug to Twilio). `None`: only registered slugs.
    pub slug_lookup: Option<SlugLookup>,
}

/// The environment variables whose values the sandbox accepts instead of its dev credentials.
pub const CREDENTIAL_VARS: [&str; 4] = [
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "RESEND_API_KEY",
    "CLERK_SECRET_KEY",
];

impl SandboxConfig {
    /// The dev main account SID: 34 characters starting with `AC`, like a real one.
    pub const DEV_TWILIO_ACCOUNT_SID: &'static str = "ACsandbox0000000000000000000000000";
    /// The dev Twilio auth token.
    pub const DEV_TWILIO_AUTH_TOKEN: &'static str = "sandbox-token";
    /// The dev Resend API key.
    pub const DEV_RESEND_API_KEY: &'static str = "re_sandbox";
    /// The dev Clerk secret key.
    pub const DEV_CLERK_SECRET_KEY: &'static str = "sk_test_sandbox";

    /// The dev config with each credential of [`CREDENTIAL_VARS`] that `var` names (non-empty)
    /// instead of its dev value, and one line per provider saying what is accepted (the SID and
    /// dev values in clear, a secret from the environment only by its variable's name).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> (Self, Vec<String>) {
        let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        let mut config = Self::default();
        let secret = |name: &str, dev: &str, slot: &mut String| match var(name) {
            Some(value) => {
                *slot = value;
                format!("the one in {name}")
            }
            None => format!("the dev one {dev:?} ({name} is not set)"),
        };
        let sid = match var("TWILIO_ACCOUNT_SID") {
            Some(sid) => {
                config.twilio_account_sid.clone_from(&sid);
                format!("{sid} (from TWILIO_ACCOUNT_SID)")
            }
            None => format!(
                "{} (dev; TWILIO_ACCOUNT_SID is not set)",
                Self::DEV_TWILIO_ACCOUNT_SID
            ),
        };
        let token = secret(
            "TWILIO_AUTH_TOKEN",
            Self::DEV_TWILIO_AUTH_TOKEN,
            &mut config.twilio_auth_token,
        );
        let resend = secret(
            "RESEND_API_KEY",
            Self::DEV_RESEND_API_KEY,
            &mut config.resend_api_key,
        );
        let clerk = secret(
            "CLERK_SECRET_KEY",
            Self::DEV_CLERK_SECRET_KEY,
            &mut config.clerk_secret_key,
        );
        let accepted = vec![
            format!("twilio  Basic auth: account {sid}, auth token {token}"),
            format!("resend  Bearer API key: {resend}"),
            format!("clerk   Bearer secret key: {clerk}"),
        ];
        (config, accepted)
    }

    /// [`SandboxConfig::from_vars`] over the process environment.
    pub fn from_env() -> (Self, Vec<String>) {
        Self::from_vars(|name| std::env::var(name).ok())
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            slow_delay: Duration::from_secs(10),
            twilio_account_sid: Self::DEV_TWILIO_ACCOUNT_SID.to_owned(),
            twilio_auth_token: Self::DEV_TWILIO_AUTH_TOKEN.to_owned(),
            resend_api_key: Self::DEV_RESEND_API_KEY.to_owned(),
            clerk_secret_key: Self::DEV_CLERK_SECRET_KEY.to_owned(),
            slug_lookup: None,
        }
    }
}

impl std::fmt::Debug for SandboxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxConfig")
            .field("slow_delay", &self.slow_delay)
            .field("twilio_account_sid", &self.twilio_account_sid)
            .field("twilio_auth_token", &"[REDACTED]")
            .field("resend_api_key", &"[REDACTED]")
            .field("clerk_secret_key", &"[REDACTED]")
            .field("slug_lookup", &self.slug_lookup.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_credentials_replace_the_dev_ones_and_are_named_not_shown() {
        let env = |name: &str| match name {
            "TWILIO_ACCOUNT_SID" => Some("AC0123456789abcdef0123456789abcdef".to_owned()),
            "TWILIO_AUTH_TOKEN" => Some("tok-secret-value".to_owned()),
            "CLERK_SECRET_KEY" => Some("  ".to_owned()),
            _ => None,
        };
        let (config, accepted) = SandboxConfig::from_vars(env);
        assert_eq!(
            config.twilio_account_sid,
            "AC0123456789abcdef0123456789abcdef"
        );
        assert_eq!(config.twilio_auth_token, "tok-secret-value");
        assert_eq!(config.resend_api_key, SandboxConfig::DEV_RESEND_API_KEY);
        assert_eq!(config.clerk_secret_key, SandboxConfig::DEV_CLERK_SECRET_KEY);
        let text = accepted.join("\n");
        assert!(text.contains("AC0123456789abcdef0123456789abcdef"));
        assert!(text.contains("the one in TWILIO_AUTH_TOKEN"));
        assert!(!text.contains("tok-secret-value"), "{text}");
        assert!(text.contains("re_sandbox") && text.contains("sk_test_sandbox"));
    }
}
