//! What the pages and the API read: one module per area, plain SQL, keyset pagination.

pub mod inbox;
pub mod jobs;
pub mod onboardings;
pub mod overview;
pub mod queues;
pub mod workers;

/// Timestamps as the API shows them.
pub type Time = chrono::DateTime<chrono::Utc>;

/// The page size when none is asked for, and the most one page may hold.
pub const DEFAULT_LIMIT: i64 = 50;
/// See [`DEFAULT_LIMIT`].
pub const MAX_LIMIT: i64 = 200;

/// A requested page size, clamped.
pub fn limit(asked: Option<i64>) -> i64 {
    asked.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
}

/// Escapes `%`, `_` and `\` for a `like` pattern.
pub fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}
