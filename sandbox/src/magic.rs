//! Magic values (DESIGN.md §7): which keys turn a provider call into a failure, and which keys a
//! Twilio create or an email send is judged by.

use crate::state::Data;

/// Org slug / id / `FriendlyName` suffix: Twilio create answers 400.
pub const FAIL_TWILIO: &str = "-fail-twilio";
/// Org slug / id / `FriendlyName` suffix: Twilio create answers 503 twice, then succeeds.
pub const FLAKY_TWILIO: &str = "-flaky-twilio";
/// Org slug / id / `FriendlyName` suffix: Twilio create answers after `slow_delay`.
pub const SLOW_TWILIO: &str = "-slow-twilio";
/// How many times a flaky key fails before it succeeds.
pub const FLAKY_FAILURES: u32 = 2;
/// The prefix the onboarding worker gives sub-account names.
pub(crate) const ORG_PREFIX: &str = "org:";

/// What a Twilio create should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TwilioMagic {
    /// Answer 400.
    Fail,
    /// Answer 503 until the key has failed [`FLAKY_FAILURES`] times.
    Flaky,
    /// Create at once, answer late.
    Slow,
}

/// What an email send should do for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EmailMagic {
    /// Answer 422.
    Fail,
    /// Answer 429 until the recipient has failed [`FLAKY_FAILURES`] times.
    Flaky,
}

/// The keys a create named `friendly_name` is judged by: the name, the org id after `org:` and
/// the slug registered for that org id.
pub(crate) fn twilio_keys(data: &Data, friendly_name: &str) -> Vec<String> {
    let mut keys = vec![friendly_name.to_owned()];
    if let Some(org_id) = friendly_name.strip_prefix(ORG_PREFIX) {
        keys.push(org_id.to_owned());
        if let Some(slug) = data.slugs.get(org_id) {
            keys.push(slug.clone());
        }
    }
    keys
}

/// The magic of a Twilio create named `friendly_name`, unless one of its keys was healed.
pub(crate) fn twilio(data: &Data, friendly_name: &str) -> Option<TwilioMagic> {
    let keys = twilio_keys(data, friendly_name);
    if data.is_healed(keys.iter().map(String::as_str)) {
        return None;
    }
    let has = |suffix: &str| keys.iter().any(|key| key.ends_with(suffix));
    if has(FAIL_TWILIO) {
        Some(TwilioMagic::Fail)
    } else if has(FLAKY_TWILIO) {
        Some(TwilioMagic::Flaky)
    } else if has(SLOW_TWILIO) {
        Some(TwilioMagic::Slow)
    } else {
        None
    }
}

/// The magic of sending to `address` (a bare address), unless it was healed.
pub(crate) fn email(data: &Data, address: &str) -> Option<EmailMagic> {
    if data.is_healed([address]) {
        return None;
    }
    let local = address.split('@').next().unwrap_or_default();
    if local.eq_ignore_ascii_case("fail") {
        Some(EmailMagic::Fail)
    } else if local.eq_ignore_ascii_case("flaky") {
        Some(EmailMagic::Flaky)
    } else {
        None
    }
}
