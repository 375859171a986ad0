//! Per-kind options: queue, attempts, durable backoff and timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter: `min(cap, base · 2^(attempt-1)) · (1 ± jitter)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt.
    pub base: Duration,
    /// Largest delay before jitter.
    pub cap: Duration,
    /// Fraction of the delay added or removed at random, in `[0, 1)`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(3600),
            jitter: 0.1,
        }
    }
}

impl RetryPolicy {
    /// The delay before the attempt after `attempt` (1-based) failed, without jitter.
    pub fn nominal_delay(&self, attempt: i32) -> Duration {
        let exponent = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(40);
        let factor = 2u64.saturating_pow(exponent);
        let millis = u64::try_from(self.base.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(factor);
        Duration::from_millis(millis).min(self.cap)
    }

    /// The delay with jitter applied: within `nominal · [1 - jitter, 1 + jitter]`.
    pub fn delay(&self, attempt: i32) -> Duration {
        let nominal = self.nominal_delay(attempt).as_secs_f64();
        let jitter = self.jitter.clamp(0.0, 0.99);
        let factor = if jitter > 0.0 {
            rand::rng().random_range(1.0 - jitter..=1.0 + jitter)
        } else {
            1.0
        };
        Duration::from_secs_f64(nominal * factor)
    }
}

/// How jobs of one kind are run.
#[derive(Debug, Clone, PartialEq)]
pub struct KindOptions {
    /// The queue the kind's jobs go to.
    pub queue: String,
    /// Attempts before the job is discarded.
    pub max_attempts: i32,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// One attempt's time limit; the lease is at least twice this.
    pub timeout: Duration,
    /// A completed job keeps its unique key taken.
    pub unique_completed: bool,
}

impl Default for KindOptions {
    fn default() -> Self {
        KindOptions {
            queue: "default".to_owned(),
            max_attempts: 20,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(60),
            unique_completed: false,
        }
    }
}

/// Options by kind name, with a default for kinds not listed.
#[derive(Debug, Clone, Default)]
pub struct Kinds {
    by_name: Arc<HashMap<String, KindOptions>>,
    default: KindOptions,
}

impl Kinds {
    /// A registry whose unlisted kinds use `default`.
    pub fn new(default: KindOptions) -> Self {
        Kinds {
            by_name: Arc::default(),
            default,
        }
    }

    /// Adds or replaces a kind's options.
    pub fn with(mut self, kind: impl Into<String>, options: KindOptions) -> Self {
        Arc::make_mut(&mut self.by_name).insert(kind.into(), options);
        self
    }

    /// Adds a typed kind with its own options.
    pub fn with_kind<T: crate::JobKind>(self) -> Self {
        self.with(T::KIND, T::options())
    }

    /// The options for `kind`.
    pub fn get(&self, kind: &str) -> &KindOptions {
        self.by_name.get(kind).unwrap_or(&self.default)
    }

    /// The longest timeout of any kind (the lease must cover it twice).
    pub fn longest_timeout(&self) -> Duration {
        self.by_name
            .values()
            .map(|o| o.timeout)
            .fold(self.default.timeout, Duration::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_per_attempt_up_to_the_cap() {
        let policy = RetryPolicy {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(10),
            jitter: 0.0,
        };
        assert_eq!(policy.delay(1), Duration::from_secs(2));
        assert_eq!(policy.delay(2), Duration::from_secs(4));
        assert_eq!(policy.delay(3), Duration::from_secs(8));
        assert_eq!(policy.delay(4), Duration::from_secs(10));
        assert_eq!(policy.delay(400), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_inside_its_window() {
        let policy = RetryPolicy {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(100),
            jitter: 0.2,
        };
        for _ in 0..1000 {
            let d = policy.delay(1).as_secs_f64();
            assert!((8.0..=12.0).contains(&d), "{d}");
        }
    }
}
