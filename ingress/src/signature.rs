//! Svix signature verification over the raw body bytes: the `svix` crate checks the HMAC
//! (`verify_ignoring_timestamp`, against every configured secret) and we check the ±5 minute
//! window on `svix-timestamp` ourselves, against an injectable [`Clock`].

use std::sync::Arc;

use axum::http::HeaderMap;
use onboarding::SvixId;

use crate::settings::WebhookSecrets;

/// Largest accepted distance between `svix-timestamp` and now, either way (as Svix).
pub const TOLERANCE_SECONDS: i64 = 300;

/// The current Unix time in seconds; tests pin it.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock(now = {})", self.now())
    }
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock(Arc::new(system_now))
    }

    /// A clock stopped at `unix_seconds`.
    pub fn fixed(unix_seconds: i64) -> Self {
        Clock(Arc::new(move || unix_seconds))
    }

    /// A clock reading `now`.
    pub fn from_fn(now: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Clock(Arc::new(now))
    }

    /// Now, in Unix seconds.
    pub fn now(&self) -> i64 {
        (self.0)()
    }
}

fn system_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Why a delivery is not authentic. [`SignatureError::reason`] labels the metric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A required header is absent (`400`).
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is not valid text, or the id has characters ids never have (`400`).
    #[error("invalid header {0}")]
    InvalidHeader(&'static str),
    /// `svix-timestamp` is not a non-negative integer (`401`).
    #[error("invalid timestamp")]
    InvalidTimestamp,
    /// `svix-timestamp` is more than 5 minutes old (`401`).
    #[error("timestamp too old")]
    TimestampTooOld,
    /// `svix-timestamp` is more than 5 minutes ahead (`401`).
    #[error("timestamp in the future")]
    TimestampInFuture,
    /// No `v1` signature matches any configured secret (`401`).
    #[error("no matching signature")]
    NoMatchingSignature,
}

impl SignatureError {
    /// A short label: `missing_header`, `invalid_header`, `invalid_timestamp`,
    /// `timestamp_too_old`, `timestamp_in_future` or `no_matching_signature`.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::MissingHeader(_) => "missing_header",
            SignatureError::InvalidHeader(_) => "invalid_header",
            SignatureError::InvalidTimestamp => "invalid_timestamp",
            SignatureError::TimestampTooOld => "timestamp_too_old",
            SignatureError::TimestampInFuture => "timestamp_in_future",
            SignatureError::NoMatchingSignature => "no_matching_signature",
        }
    }
}

/// The three Svix headers of a delivery, read and parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvixHeaders {
    /// `svix-id`.
    pub id: SvixId,
    /// `svix-timestamp`, Unix seconds.
    pub timestamp: i64,
    /// `svix-signature`: space-separated `v1,<base64>` entries.
    pub signature: String,
}

/// `svix-*` first, `webhook-*` (Standard Webhooks) as the fallback, as the `svix` crate reads.
fn header<'a>(
    headers: &'a HeaderMap,
    svix: &'static str,
    unbranded: &'static str,
) -> Result<&'a str, SignatureError> {
    headers
        .get(svix)
        .or_else(|| headers.get(unbranded))
        .ok_or(SignatureError::MissingHeader(svix))?
        .to_str()
        .map_err(|_| SignatureError::InvalidHeader(svix))
}

impl SvixHeaders {
    /// Reads the headers; a missing one is named (in its `svix-` form).
    pub fn read(headers: &HeaderMap) -> Result<Self, SignatureError> {
        let id = header(headers, "svix-id", "webhook-id")?;
        let timestamp = header(headers, "svix-timestamp", "webhook-timestamp")?;
        let signature = header(headers, "svix-signature", "webhook-signature")?;
        let id = SvixId::parse(id).map_err(|_| SignatureError::InvalidHeader("svix-id"))?;
        let timestamp = timestamp
            .parse::<i64>()
            .ok()
            .filter(|t| *t >= 0)
            .ok_or(SignatureError::InvalidTimestamp)?;
        Ok(SvixHeaders {
            id,
            timestamp,
            signature: signature.to_owned(),
        })
    }
}

impl WebhookSecrets {
    /// Checks the timestamp window against `now`, then the signature over the exact `body`
    /// bytes against every secret. `parsed` must come from the same `headers`.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        parsed: &SvixHeaders,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        if parsed.timestamp < now.saturating_sub(TOLERANCE_SECONDS) {
            return Err(SignatureError::TimestampTooOld);
        }
        if parsed.timestamp > now.saturating_add(TOLERANCE_SECONDS) {
            return Err(SignatureError::TimestampInFuture);
        }
        // The crate compares in constant time and ignores entries that are not `v1,…`.
        if self
            .keys()
            .iter()
            .any(|key| key.verify_ignoring_timestamp(body, headers).is_ok())
        {
            Ok(())
        } else {
            Err(SignatureError::NoMatchingSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    //! The official Svix vectors and rules (`fixtures/svix/vectors.json`) through our path.

    use axum::http::HeaderValue;
    use secrecy::SecretString;
    use serde_json::Value;

    use super::*;
    use crate::send::sign;

    fn vectors() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/svix/vectors.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).expect("read vectors.json"))
            .expect("parse vectors.json")
    }

    fn body_of(vector: &Value) -> Vec<u8> {
        match vector.get("body") {
            Some(Value::String(body)) => body.clone().into_bytes(),
            _ => {
                let repeat = &vector["body_repeat"];
                let count = usize::try_from(repeat["count"].as_u64().unwrap()).unwrap();
                repeat["char"].as_str().unwrap().repeat(count).into_bytes()
            }
        }
    }

    fn secrets(value: &str) -> WebhookSecrets {
        WebhookSecrets::parse(&SecretString::from(value.to_owned())).unwrap()
    }

    fn headers(id: &str, timestamp: i64, signature: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert("svix-id", HeaderValue::from_str(id).unwrap());
        map.insert(
            "svix-timestamp",
            HeaderValue::from_str(&timestamp.to_string()).unwrap(),
        );
        map.insert("svix-signature", HeaderValue::from_str(signature).unwrap());
        map
    }

    fn check(secret: &str, map: &HeaderMap, body: &[u8], now: i64) -> Result<(), SignatureError> {
        let parsed = SvixHeaders::read(map)?;
        secrets(secret).verify(map, &parsed, body, now)
    }

    const T1_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const T1_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const T1_TS: i64 = 1_614_265_330;
    const T1_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const T1_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn every_official_vector_signs_and_verifies() {
        let vectors = vectors();
        for vector in vectors["sign"].as_array().unwrap() {
            let name = vector["name"].as_str().unwrap();
            let secret = vector["secret"].as_str().unwrap();
            let id = vector["id"].as_str().unwrap();
            let ts = vector["timestamp"].as_i64().unwrap();
            let expected = vector["signature"].as_str().unwrap();
            let body = body_of(vector);
            assert_eq!(
                sign(secret, id, ts, &body).unwrap(),
                expected,
                "sign {name}"
            );
            assert_eq!(
                check(secret, &headers(id, ts, expected), &body, ts),
                Ok(()),
                "verify {name}"
            );
        }
    }

    #[test]
    fn every_official_negative_vector_fails() {
        let vectors = vectors();
        for vector in vectors["verify_negative"].as_array().unwrap() {
            let ts = vector["timestamp"].as_i64().unwrap();
            let map = headers(
                vector["id"].as_str().unwrap(),
                ts,
                vector["signature"].as_str().unwrap(),
            );
            let result = check(
                vector["secret"].as_str().unwrap(),
                &map,
                &body_of(vector),
                ts,
            );
            assert_eq!(
                result,
                Err(SignatureError::NoMatchingSignature),
                "{}",
                vector["name"]
            );
        }
    }

    #[test]
    fn any_v1_entry_may_match_and_other_versions_are_skipped() {
        let list = format!(
            "v1a,{} v2,{} garbage {T1_SIG} v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQHxjHX8gE=",
            &T1_SIG[3..],
            &T1_SIG[3..]
        );
        assert_eq!(
            check(T1_SECRET, &headers(T1_ID, T1_TS, &list), T1_BODY, T1_TS),
            Ok(())
        );
        let only_others = format!("v1a,{} v2,{}", &T1_SIG[3..], &T1_SIG[3..]);
        assert_eq!(
            check(
                T1_SECRET,
                &headers(T1_ID, T1_TS, &only_others),
                T1_BODY,
                T1_TS
            ),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn the_valid_signature_in_third_place_passes_and_without_it_fails() {
        let others = [
            "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ=",
            "v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q=",
            "v1,9DfC1c3eeOrXB6w/5dIDydLNQaEyww5KalE5jLBZucE=",
        ];
        let with = format!("{} {} {T1_SIG} {}", others[0], others[1], others[2]);
        assert_eq!(
            check(T1_SECRET, &headers(T1_ID, T1_TS, &with), T1_BODY, T1_TS),
            Ok(())
        );
        let without = others.join(" ");
        assert_eq!(
            check(T1_SECRET, &headers(T1_ID, T1_TS, &without), T1_BODY, T1_TS),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn an_empty_or_truncated_signature_fails() {
        for partial in ["v1,", &T1_SIG[..8], &T1_SIG[..T1_SIG.len() - 1]] {
            assert_eq!(
                check(T1_SECRET, &headers(T1_ID, T1_TS, partial), T1_BODY, T1_TS),
                Err(SignatureError::NoMatchingSignature),
                "{partial}"
            );
        }
    }

    #[test]
    fn the_timestamp_must_be_within_five_minutes_either_way() {
        let now = 1_700_000_000;
        for (ts, expected) in [
            (now - 301, Err(SignatureError::TimestampTooOld)),
            (now + 301, Err(SignatureError::TimestampInFuture)),
            (now - 300, Ok(())),
            (now + 300, Ok(())),
        ] {
            let signature = sign(T1_SECRET, T1_ID, ts, T1_BODY).unwrap();
            assert_eq!(
                check(T1_SECRET, &headers(T1_ID, ts, &signature), T1_BODY, now),
                expected,
                "ts {ts}"
            );
        }
        let signature = sign(T1_SECRET, T1_ID, -1, T1_BODY).unwrap();
        assert_eq!(
            check(T1_SECRET, &headers(T1_ID, -1, &signature), T1_BODY, now),
            Err(SignatureError::InvalidTimestamp)
        );
    }

    #[test]
    fn a_timestamp_one_second_off_the_signed_one_fails() {
        assert_eq!(
            check(
                T1_SECRET,
                &headers(T1_ID, T1_TS + 1, T1_SIG),
                T1_BODY,
                T1_TS
            ),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn each_missing_header_fails_and_webhook_headers_are_the_fallback() {
        for missing in ["svix-id", "svix-timestamp", "svix-signature"] {
            let mut map = headers(T1_ID, T1_TS, T1_SIG);
            map.remove(missing);
            assert_eq!(
                check(T1_SECRET, &map, T1_BODY, T1_TS),
                Err(SignatureError::MissingHeader(missing))
            );
        }
        let mut unbranded = HeaderMap::new();
        unbranded.insert("webhook-id", HeaderValue::from_static(T1_ID));
        unbranded.insert(
            "webhook-timestamp",
            HeaderValue::from_str(&T1_TS.to_string()).unwrap(),
        );
        unbranded.insert("webhook-signature", HeaderValue::from_static(T1_SIG));
        assert_eq!(check(T1_SECRET, &unbranded, T1_BODY, T1_TS), Ok(()));
        for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            let mut map = unbranded.clone();
            map.remove(missing);
            assert!(matches!(
                check(T1_SECRET, &map, T1_BODY, T1_TS),
                Err(SignatureError::MissingHeader(_))
            ));
        }
    }

    #[test]
    fn the_secret_works_with_or_without_its_prefix_and_blank_ones_are_refused() {
        let bare = T1_SECRET.trim_start_matches("whsec_");
        assert_eq!(
            check(bare, &headers(T1_ID, T1_TS, T1_SIG), T1_BODY, T1_TS),
            Ok(())
        );
        for blank in ["whsec_", ""] {
            assert!(
                WebhookSecrets::parse(&SecretString::from(blank.to_owned())).is_err(),
                "{blank:?}"
            );
        }
    }

    #[test]
    fn a_reserialised_body_does_not_verify() {
        let reserialised =
            serde_json::to_vec(&serde_json::from_slice::<Value>(T1_BODY).unwrap()).unwrap();
        assert_ne!(reserialised, T1_BODY);
        assert_eq!(
            check(
                T1_SECRET,
                &headers(T1_ID, T1_TS, T1_SIG),
                &reserialised,
                T1_TS
            ),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn any_of_several_secrets_may_have_signed() {
        let both = format!("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD {T1_SECRET}");
        assert_eq!(
            check(&both, &headers(T1_ID, T1_TS, T1_SIG), T1_BODY, T1_TS),
            Ok(())
        );
    }

    #[test]
    fn an_id_with_a_dot_is_an_invalid_header() {
        assert_eq!(
            SvixHeaders::read(&headers("msg.1", T1_TS, T1_SIG)),
            Err(SignatureError::InvalidHeader("svix-id"))
        );
    }
}
