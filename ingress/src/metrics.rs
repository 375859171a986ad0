//! The ingress's series, recorded into the process-wide recorder (see `telemetry`): requests by
//! route and status, signature failures by reason, duplicate and rejected deliveries, and the
//! time to store a delivery with its job.

use std::time::Duration;

/// HTTP requests answered, by `route` (matched path, or `unmatched`) and `status`.
pub const REQUESTS: &str = "onboard_ingress_requests_total";
/// Webhook deliveries that failed verification, by `reason`.
pub const SIGNATURE_FAILURES: &str = "onboard_ingress_signature_failures_total";
/// Deliveries whose `svix-id` was already stored.
pub const DUPLICATES: &str = "onboard_ingress_duplicate_deliveries_total";
/// Signed deliveries that were not Clerk envelopes.
pub const REJECTED: &str = "onboard_ingress_rejected_deliveries_total";
/// Time to store a delivery and enqueue its job (histogram).
pub const ENQUEUE_SECONDS: &str = "onboard_ingress_enqueue_seconds";

/// Counts one answered request.
pub fn request(route: &str, status: u16) {
    ::metrics::counter!(REQUESTS, "route" => route.to_owned(), "status" => status.to_string())
        .increment(1);
}

/// Counts one delivery that failed verification.
pub fn signature_failure(reason: &'static str) {
    ::metrics::counter!(SIGNATURE_FAILURES, "reason" => reason).increment(1);
}

/// Counts one delivery whose `svix-id` was already in the inbox.
pub fn duplicate() {
    ::metrics::counter!(DUPLICATES).increment(1);
}

/// Counts one signed delivery that was not a Clerk envelope.
pub fn rejected() {
    ::metrics::counter!(REJECTED).increment(1);
}

/// Records how long storing a delivery and enqueueing its job took.
pub fn enqueue_latency(elapsed: Duration) {
    ::metrics::histogram!(ENQUEUE_SECONDS).record(elapsed.as_secs_f64());
}

/// Describes the series (their `# HELP` lines) and makes the counters exist at zero, so a
/// scrape shows them before the first event.
pub fn describe() {
    ::metrics::describe_counter!(REQUESTS, "HTTP requests answered, by route and status.");
    ::metrics::describe_counter!(
        SIGNATURE_FAILURES,
        "Webhook deliveries that failed verification, by reason."
    );
    ::metrics::describe_counter!(DUPLICATES, "Deliveries whose svix-id was already stored.");
    ::metrics::describe_counter!(REJECTED, "Signed deliveries that were not Clerk envelopes.");
    ::metrics::describe_histogram!(
        ENQUEUE_SECONDS,
        ::metrics::Unit::Seconds,
        "Time to store a delivery and enqueue its job."
    );
    ::metrics::counter!(DUPLICATES).increment(0);
    ::metrics::counter!(REJECTED).increment(0);
}
