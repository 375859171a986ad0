//! What each session has revealed: an operator's reveal of a record's personal data is audited
//! once and lasts ten minutes for that session (so the live refresh keeps showing it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a reveal lasts.
pub const REVEAL_FOR: Duration = Duration::from_secs(600);

/// Reveals by (session key, target).
#[derive(Debug, Default)]
pub struct Reveals {
    granted: Mutex<HashMap<(Vec<u8>, String), Instant>>,
}

impl Reveals {
    /// Grants `target` to the session.
    pub fn grant(&self, session: &[u8], target: &str) {
        let mut granted = self.granted.lock().expect("reveals lock");
        granted.retain(|_, at| at.elapsed() < REVEAL_FOR);
        granted.insert((session.to_vec(), target.to_owned()), Instant::now());
    }

    /// True while the session may see `target` unmasked.
    pub fn granted(&self, session: &[u8], target: &str) -> bool {
        self.granted
            .lock()
            .expect("reveals lock")
            .get(&(session.to_vec(), target.to_owned()))
            .is_some_and(|at| at.elapsed() < REVEAL_FOR)
    }
}
