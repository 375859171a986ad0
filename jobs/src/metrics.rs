//! The queue's series, recorded through the `metrics` facade into whatever recorder the
//! process installed (none: recording is a no-op): attempts by outcome and their durations,
//! reaped leases, and the depth and age of each queue (sampled by `QueueSampler`).

use std::time::Duration;

/// Attempts by `queue`, `kind` and `outcome` (`completed`, `retried`, `discarded`,
/// `cancelled`, `snoozed`).
pub const JOBS: &str = "onboard_jobs_total";
/// How long attempts ran, by `queue` and `kind` (histogram).
pub const ATTEMPT_SECONDS: &str = "onboard_job_attempt_seconds";
/// Running jobs whose lease expired and that the reaper returned to the queue.
pub const LEASES_REAPED: &str = "onboard_leases_reaped_total";
/// Jobs ready to run now (available, or scheduled/retryable and due), by `queue` (sampled).
pub const QUEUE_DEPTH: &str = "onboard_queue_depth";
/// How long the oldest ready job has waited, in seconds, by `queue` (sampled; 0 when empty).
pub const QUEUE_OLDEST_SECONDS: &str = "onboard_queue_oldest_available_seconds";

/// Records one attempt's outcome and duration.
pub fn attempt(queue: &str, kind: &str, outcome: &'static str, elapsed: Duration) {
    let (queue, kind) = (queue.to_owned(), kind.to_owned());
    metrics::histogram!(ATTEMPT_SECONDS, "queue" => queue.clone(), "kind" => kind.clone())
        .record(elapsed.as_secs_f64());
    metrics::counter!(JOBS, "queue" => queue, "kind" => kind, "outcome" => outcome).increment(1);
}

/// Records `count` leases reaped.
pub fn leases_reaped(count: u64) {
    metrics::counter!(LEASES_REAPED).increment(count);
}

/// Records one sample of a queue.
pub fn queue_sample(queue: &str, depth: u64, oldest: Duration) {
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!(QUEUE_DEPTH, "queue" => queue.to_owned()).set(depth as f64);
    metrics::gauge!(QUEUE_OLDEST_SECONDS, "queue" => queue.to_owned()).set(oldest.as_secs_f64());
}

/// Describes the series (their `# HELP` lines) and makes the reaper's counter exist at zero.
pub fn describe() {
    metrics::describe_counter!(JOBS, "Job attempts by queue, kind and outcome.");
    metrics::describe_histogram!(
        ATTEMPT_SECONDS,
        metrics::Unit::Seconds,
        "How long job attempts ran, by queue and kind."
    );
    metrics::describe_counter!(
        LEASES_REAPED,
        "Running jobs whose lease expired, returned to the queue."
    );
    metrics::describe_gauge!(QUEUE_DEPTH, "Jobs ready to run now, by queue.");
    metrics::describe_gauge!(
        QUEUE_OLDEST_SECONDS,
        metrics::Unit::Seconds,
        "How long the oldest ready job has waited, by queue."
    );
    metrics::counter!(LEASES_REAPED).increment(0);
}
