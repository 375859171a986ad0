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

    /// A failure that is permanent when `permanent` (retrying cannot help), else retried: for
    /// an error type that knows which it is.
    pub fn classified(message: impl std::fmt::Display, permanent: bool) -> Self {
        if permanent {
            Self::permanent(message)
        } else {
            Self::retry(message)
        }
    }
}

/// An error text as stored: without NUL characters (PostgreSQL's text and jsonb reject them)
/// and cut to [`MAX_MESSAGE_BYTES`] on a character boundary.
pub(crate) fn storable(message: &str) -> String {
    let mut text: String = message.chars().filter(|c| *c != '\0').collect();
    if text.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storable_text_has_no_nul_and_a_bounded_length() {
        assert_eq!(storable("a\0b"), "ab");
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = storable(&long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES && cut.len() > MAX_MESSAGE_BYTES - 2);
    }
}
