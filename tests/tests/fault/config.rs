//! The run's knobs: defaults per form, overridden by `FAULT_*` environment variables.

use std::fmt;
use std::time::Duration;

/// What one fault run does.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seeds every random choice of the plan (`FAULT_SEED`; printed, to replay a run).
    pub seed: u64,
    /// Organizations onboarded (`FAULT_ORGS`).
    pub orgs: usize,
    /// Worker SIGKILLs (`FAULT_KILLS`).
    pub kills: usize,
    /// PostgreSQL immediate restarts (`FAULT_PG_RESTARTS`).
    pub pg_restarts: usize,
    /// Kills happen at random moments in `[1 s, window]`; deliveries are spread over its first
    /// half, where the restarts fall (`FAULT_WINDOW_SECS`).
    pub window: Duration,
}

fn var<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(parsed) => Some(parsed),
        Err(_) => panic!("{name}={value} is not a valid number"),
    }
}

impl Config {
    /// The form's defaults, each overridable by its variable.
    pub fn from_env(orgs: usize, kills: usize, pg_restarts: usize, window: Duration) -> Config {
        Config {
            seed: var("FAULT_SEED").unwrap_or_else(rand::random),
            orgs: var("FAULT_ORGS").unwrap_or(orgs).max(1),
            kills: var("FAULT_KILLS").unwrap_or(kills),
            pg_restarts: var("FAULT_PG_RESTARTS").unwrap_or(pg_restarts),
            window: var("FAULT_WINDOW_SECS")
                .map(Duration::from_secs_f64)
                .unwrap_or(window)
                .max(Duration::from_secs(2)),
        }
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fault run: FAULT_SEED={} FAULT_ORGS={} FAULT_KILLS={} FAULT_PG_RESTARTS={} FAULT_WINDOW_SECS={}",
            self.seed,
            self.orgs,
            self.kills,
            self.pg_restarts,
            self.window.as_secs_f64()
        )
    }
}
