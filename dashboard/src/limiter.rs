//! Login attempts rate-limited per name: after `max` failures in `window`, that name's logins
//! are refused until the window passes (whatever the password).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures per name.
#[derive(Debug)]
pub struct LoginLimiter {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl LoginLimiter {
    /// At most `max` failures per name in `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        LoginLimiter {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// True while the name may try again.
    pub fn allowed(&self, name: &str) -> bool {
        let mut failures = self.failures.lock().expect("limiter lock");
        match failures.get(name) {
            Some((_, since)) if since.elapsed() >= self.window => {
                failures.remove(name);
                true
            }
            Some((count, _)) => *count < self.max,
            None => true,
        }
    }

    /// Counts a failure.
    pub fn failed(&self, name: &str) {
        let mut failures = self.failures.lock().expect("limiter lock");
        if failures.len() > 100_000 {
            let window = self.window;
            failures.retain(|_, (_, since)| since.elapsed() < window);
        }
        let entry = failures
            .entry(name.to_owned())
            .or_insert((0, Instant::now()));
        entry.0 += 1;
    }

    /// Forgets the failures of a name (after a successful login).
    pub fn succeeded(&self, name: &str) {
        self.failures.lock().expect("limiter lock").remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_blocked_after_max_failures_only() {
        let limiter = LoginLimiter::new(2, Duration::from_secs(60));
        assert!(limiter.allowed("a"));
        limiter.failed("a");
        assert!(limiter.allowed("a"));
        limiter.failed("a");
        assert!(!limiter.allowed("a"));
        assert!(limiter.allowed("b"));
        limiter.succeeded("a");
        assert!(limiter.allowed("a"));
    }
}
