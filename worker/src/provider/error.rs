//! One classification of provider failures for Twilio, Resend and Clerk, which the job handlers
//! map to the queue's outcomes (retry after, reconcile then retry, discard).
//!
//! | what happened | idempotent call | non-idempotent call (Twilio create) |
//! |---|---|---|
//! | connection refused / DNS / TLS handshake (nothing sent), after 2 quick in-process retries | `Retryable` | `Retryable` |
//! | timeout, connection lost after sending, unreadable 2xx body | `Retryable` | `Ambiguous` |
//! | 429 | `Retryable` (+ `Retry-After`) | `Retryable` (never processed) |
//! | 503 | `Retryable` (+ `Retry-After`) | `Retryable` (not processed) |
//! | other 5xx (500, 502, 504, …) | `Retryable` (+ `Retry-After`) | `Ambiguous` |
//! | Resend 409 `concurrent_idempotent_requests` | `Retryable` | — |
//! | any other status outside 2xx (incl. Resend 409 `invalid_idempotent_request`) | `Permanent` | `Permanent` |
//!
//! Idempotent calls are every read, Twilio status updates (setting a status twice is harmless),
//! Resend sends with an `Idempotency-Key` and Clerk metadata merges. `Ambiguous` means "may have
//! taken effect": the caller reconciles (lists by `FriendlyName`) before trying again. A caller
//! that reconciles before every create anyway (saga step 3 does) may treat `Ambiguous` as retryable.

use std::time::Duration;

/// Why a provider call failed, classified for the durable retry logic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Retry later (429, 5xx, Resend 409 `concurrent_idempotent_requests`, nothing sent);
    /// `retry_after` comes from the `Retry-After` header (seconds) when present.
    #[error("{}retryable provider error: {message}", status_prefix(*status))]
    Retryable {
        /// The HTTP status, `None` when no response arrived.
        status: Option<u16>,
        /// The provider's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
        /// What went wrong, without credentials.
        message: String,
    },
    /// The request may or may not have taken effect (timeout, connection lost after sending, 5xx
    /// other than 503 on a non-idempotent create): callers reconcile before retrying.
    #[error("ambiguous provider outcome: {message}")]
    Ambiguous {
        /// What went wrong, without credentials.
        message: String,
    },
    /// Do not retry (other 4xx, incl. Resend 409 `invalid_idempotent_request`); `code` is the
    /// provider's error code or name. `status` 0 means the request could not even be built.
    #[error("permanent provider error {status}{}: {message}", code_suffix(code.as_deref()))]
    Permanent {
        /// The HTTP status (0 when the request was never sent).
        status: u16,
        /// Twilio's numeric `code`, Resend's `name` or Clerk's `errors[0].code`.
        code: Option<String>,
        /// The provider's message, without credentials.
        message: String,
    },
}

fn status_prefix(status: Option<u16>) -> String {
    status
        .map(|status| format!("{status} "))
        .unwrap_or_default()
}

fn code_suffix(code: Option<&str>) -> String {
    code.map(|code| format!(" ({code})")).unwrap_or_default()
}

impl ProviderError {
    /// Whether the call may simply be tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. })
    }

    /// Whether the outcome is unknown and must be reconciled before trying again.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, Self::Ambiguous { .. })
    }

    /// Whether trying again cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent { .. })
    }

    /// Whether the provider answered 404 (e.g. an auto-deleted Twilio sub-account).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Permanent { status: 404, .. })
    }

    /// The provider's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Retryable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status answered, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Retryable { status, .. } => *status,
            Self::Ambiguous { .. } => None,
            Self::Permanent { status, .. } => Some(*status),
        }
    }

    /// The provider's error code or name, for permanent errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Permanent { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// Why a provider client could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The base URL is not an absolute `http` or `https` URL without a query.
    #[error("{0} base URL must be an absolute http(s) URL without query or fragment")]
    BaseUrl(&'static str),
    /// A credential contains characters that cannot go into an HTTP header.
    #[error("{0} contains characters not allowed in an HTTP header")]
    Credential(&'static str),
    /// The HTTP client (TLS backend) could not be initialised.
    #[error("building the HTTP client")]
    Http(#[from] reqwest::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_status_and_code() {
        let error = ProviderError::Permanent {
            status: 400,
            code: Some("20001".to_owned()),
            message: "nope".to_owned(),
        };
        assert_eq!(
            error.to_string(),
            "permanent provider error 400 (20001): nope"
        );
        let error = ProviderError::Retryable {
            status: None,
            retry_after: None,
            message: "refused".to_owned(),
        };
        assert_eq!(error.to_string(), "retryable provider error: refused");
    }
}
