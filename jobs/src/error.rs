//! How a handler says what should happen after a failed attempt.

use std::time::Duration;

/// The longest error text stored per attempt, in bytes; longer texts are cut.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024;

/// A handler's failure, telling the queue what to do next. Any other error type a handler
/// returns is a plain failure: retried with the kind's backoff until attempts run out.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Retry with the kind's backoff.
    #[error("{0}")]
    Retry(String),
    /// Discard now: retrying cannot help.
    #[error("permanent: {0}")]
    Permanent(String),
    /// Retry after this delay (a provider's `Retry-After`); uses an attempt.
    #[error("retry after {0:?}: {1}")]
    RetryAfter(Duration, String),
    /// Run again after this delay without using an attempt.
    #[error("snoozed for {0:?}")]
    Snooze(Duration),
    /// Stop: the job ends `cancelled`.
    #[error("cancelled: {0}")]
    Cancel(String),
}

impl JobError {
    /// A retryable failure with a message.
    pub fn retry(message: impl std::fmt::Display) -> Self {
        JobError::Retry(message.to_string())
    }

    /// A permanent failure with a message.
    pub fn permanent(message: impl std::fmt::Display) -> Self {
        JobError::Permanent(message.to_string())
    }
}
