//! The ingress's Prometheus metrics, hand-rolled on atomics: requests by route and status,
//! signature failures by reason, duplicate and rejected deliveries, and enqueue latency.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds (seconds) of the enqueue-latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
struct Inner {
    /// route → status → count.
    requests: Mutex<HashMap<String, BTreeMap<u16, u64>>>,
    signature_failures: Mutex<BTreeMap<&'static str, u64>>,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    enqueue_buckets: [AtomicU64; BUCKETS.len()],
    enqueue_count: AtomicU64,
    enqueue_sum_nanos: AtomicU64,
}

/// Counters shared by every request of one process; cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, route: &str, status: u16) {
        let mut requests = self
            .0
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let by_status = match requests.get_mut(route) {
            Some(by_status) => by_status,
            None => requests.entry(route.to_owned()).or_default(),
        };
        *by_status.entry(status).or_default() += 1;
    }

    /// Counts one delivery that failed verification.
    pub fn signature_failure(&self, reason: &'static str) {
        let mut failures = self
            .0
            .signature_failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *failures.entry(reason).or_default() += 1;
    }

    /// Counts one delivery whose `svix-id` was already in the inbox.
    pub fn duplicate(&self) {
        self.0.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one signed delivery that was not a Clerk envelope.
    pub fn rejected(&self) {
        self.0.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long storing a delivery and enqueueing its job took.
    pub fn enqueue_latency(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in self.0.enqueue_buckets.iter().zip(BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        self.0.enqueue_count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.0.enqueue_sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The metrics in Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP onboard_ingress_requests_total HTTP requests answered, by route and status.\n",
        );
        out.push_str("# TYPE onboard_ingress_requests_total counter\n");
        {
            let requests = self
                .0
                .requests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut routes: Vec<_> = requests.iter().collect();
            routes.sort_by(|a, b| a.0.cmp(b.0));
            for (route, by_status) in routes {
                for (status, count) in by_status {
                    let _ = writeln!(
                        out,
                        "onboard_ingress_requests_total{{route=\"{}\",status=\"{status}\"}} {count}",
                        escape(route)
                    );
                }
            }
        }
        out.push_str("# HELP onboard_ingress_signature_failures_total Webhook deliveries that failed verification, by reason.\n");
        out.push_str("# TYPE onboard_ingress_signature_failures_total counter\n");
        {
            let failures = self
                .0
                .signature_failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (reason, count) in failures.iter() {
                let _ = writeln!(
                    out,
                    "onboard_ingress_signature_failures_total{{reason=\"{reason}\"}} {count}"
                );
            }
        }
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        out.push_str("# HELP onboard_ingress_duplicate_deliveries_total Deliveries whose svix-id was already stored.\n");
        out.push_str("# TYPE onboard_ingress_duplicate_deliveries_total counter\n");
        let _ = writeln!(
            out,
            "onboard_ingress_duplicate_deliveries_total {}",
            load(&self.0.duplicates)
        );
        out.push_str("# HELP onboard_ingress_rejected_deliveries_total Signed deliveries that were not Clerk envelopes.\n");
        out.push_str("# TYPE onboard_ingress_rejected_deliveries_total counter\n");
        let _ = writeln!(
            out,
            "onboard_ingress_rejected_deliveries_total {}",
            load(&self.0.rejected)
        );
        out.push_str("# HELP onboard_ingress_enqueue_seconds Time to store a delivery and enqueue its job.\n");
        out.push_str("# TYPE onboard_ingress_enqueue_seconds histogram\n");
        let mut cumulative = 0;
        for (bucket, bound) in self.0.enqueue_buckets.iter().zip(BUCKETS) {
            cumulative += load(bucket);
            let _ = writeln!(
                out,
                "onboard_ingress_enqueue_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = load(&self.0.enqueue_count);
        let _ = writeln!(
            out,
            "onboard_ingress_enqueue_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        #[allow(clippy::cast_precision_loss)]
        let sum = load(&self.0.enqueue_sum_nanos) as f64 / 1e9;
        let _ = writeln!(out, "onboard_ingress_enqueue_seconds_sum {sum}");
        let _ = writeln!(out, "onboard_ingress_enqueue_seconds_count {count}");
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_shows_every_family_with_its_labels() {
        let metrics = Metrics::default();
        metrics.request("/webhooks/clerk", 204);
        metrics.request("/webhooks/clerk", 204);
        metrics.request("/webhooks/clerk", 401);
        metrics.signature_failure("no_matching_signature");
        metrics.duplicate();
        metrics.enqueue_latency(Duration::from_micros(700));
        metrics.enqueue_latency(Duration::from_secs(10));
        let text = metrics.render();
        assert!(
            text.contains(
                "onboard_ingress_requests_total{route=\"/webhooks/clerk\",status=\"204\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "onboard_ingress_requests_total{route=\"/webhooks/clerk\",status=\"401\"} 1"
        ));
        assert!(text.contains(
            "onboard_ingress_signature_failures_total{reason=\"no_matching_signature\"} 1"
        ));
        assert!(text.contains("onboard_ingress_duplicate_deliveries_total 1"));
        assert!(text.contains("onboard_ingress_enqueue_seconds_bucket{le=\"0.0005\"} 0"));
        assert!(text.contains("onboard_ingress_enqueue_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("onboard_ingress_enqueue_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("onboard_ingress_enqueue_seconds_count 2"));
    }
}
