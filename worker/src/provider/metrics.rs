//! The provider clients' series: calls by `provider`, `action` and `status`.

/// Provider calls by `provider` (`twilio`, `resend`, `clerk`), `action` and `status` (the HTTP
/// status, or `timeout` / `error` when no response came).
pub const PROVIDER_CALLS: &str = "onboard_provider_calls_total";

/// Counts one provider call.
pub fn call(provider: &'static str, action: &'static str, status: &str) {
    ::metrics::counter!(PROVIDER_CALLS, "provider" => provider, "action" => action, "status" => status.to_owned())
        .increment(1);
}

/// Describes the series (its `# HELP` line).
pub fn describe() {
    ::metrics::describe_counter!(
        PROVIDER_CALLS,
        "Provider calls by provider, action and status."
    );
}
