//! Shared HTTP plumbing of the provider clients: building the reqwest client, sending one call
//! (with at most two quick in-process retries of connection errors, when nothing was sent) and
//! turning transport errors and error responses into [`ProviderError`]s (see `error.rs`).

use std::error::Error as _;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::redirect::Policy;
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use secrecy::{ExposeSecret as _, SecretString};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::{ProviderError, SetupError};
use super::metrics;

/// Connection errors are retried in-process at most this many times.
const CONNECT_RETRIES: usize = 2;
/// First delay between connection retries (doubles, with jitter).
const CONNECT_RETRY_DELAY: Duration = Duration::from_millis(50);
/// Longest delay between connection retries.
const CONNECT_RETRY_MAX_DELAY: Duration = Duration::from_millis(250);
/// Longest provider message kept in an error, in characters.
const MAX_MESSAGE: usize = 300;

/// Whether repeating a request is harmless; decides how uncertain failures are classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotence {
    /// Repeating it has the same effect as doing it once.
    Idempotent,
    /// Repeating it may do it twice (Twilio create).
    NonIdempotent,
}

/// A reqwest client for provider calls: no redirects (credentials never follow one), rustls.
pub(crate) fn build_client(timeout: Duration) -> Result<reqwest::Client, SetupError> {
    Ok(reqwest::Client::builder()
        .redirect(Policy::none())
        .connect_timeout(timeout)
        .user_agent(concat!("onboard/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// `Bearer <secret>` as a header value marked sensitive (hidden from `Debug`).
pub(crate) fn bearer(secret: &SecretString, name: &'static str) -> Result<HeaderValue, SetupError> {
    let mut value = HeaderValue::try_from(format!("Bearer {}", secret.expose_secret()))
        .map_err(|_| SetupError::Credential(name))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Checks that `url` can carry endpoint paths: absolute http(s), no query or fragment.
pub(crate) fn check_base_url(url: &Url, provider: &'static str) -> Result<(), SetupError> {
    let ok = matches!(url.scheme(), "http" | "https")
        && !url.cannot_be_a_base()
        && url.query().is_none()
        && url.fragment().is_none();
    if ok {
        Ok(())
    } else {
        Err(SetupError::BaseUrl(provider))
    }
}

/// `base` with `segments` appended to its path, each percent-encoded (so ids cannot add segments).
pub(crate) fn endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// `base` followed by a provider-given absolute path with query (Twilio's `next_page_uri`),
/// keeping any path prefix of `base`; `None` unless `path_and_query` is an absolute path.
pub(crate) fn join_path(base: &Url, path_and_query: &str) -> Option<Url> {
    if !path_and_query.starts_with('/') || path_and_query.starts_with("//") {
        return None;
    }
    let url = Url::parse(&format!(
        "{}{path_and_query}",
        base.as_str().trim_end_matches('/')
    ))
    .ok()?;
    (url.origin() == base.origin()).then_some(url)
}

/// The error and its causes on one line.
fn describe(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Classifies a failure to get (or read) a response.
fn transport_error(
    provider: &str,
    idempotence: Idempotence,
    error: &reqwest::Error,
) -> ProviderError {
    let message = format!("{provider}: {}", describe(error));
    if error.is_builder() {
        ProviderError::Permanent {
            status: 0,
            code: Some("request_not_built".to_owned()),
            message,
        }
    } else if error.is_connect() || idempotence == Idempotence::Idempotent {
        // Nothing was sent, or sending again is harmless.
        ProviderError::Retryable {
            status: None,
            retry_after: None,
            message,
        }
    } else {
        // Timeout or connection lost after the request may have been processed.
        ProviderError::Ambiguous { message }
    }
}

/// Sends the request `make` builds, retrying connection errors (nothing sent) at most twice with
/// short delays; answers whatever response arrives, any status. Each call is counted by
/// `provider`, `action` and `status` (the HTTP status, `timeout` or `error`).
pub(crate) async fn send(
    provider: &'static str,
    action: &'static str,
    idempotence: Idempotence,
    make: impl Fn() -> RequestBuilder,
) -> Result<Response, ProviderError> {
    let policy = ExponentialBuilder::default()
        .with_min_delay(CONNECT_RETRY_DELAY)
        .with_max_delay(CONNECT_RETRY_MAX_DELAY)
        .with_max_times(CONNECT_RETRIES)
        .with_jitter();
    (|| async { make().send().await })
        .retry(policy)
        .when(reqwest::Error::is_connect)
        .notify(|error, delay| {
            tracing::debug!(provider, error = %describe(error), ?delay, "provider connection failed; retrying");
        })
        .await
        .inspect(|response| metrics::call(provider, action, response.status().as_str()))
        .map_err(|error| {
            metrics::call(provider, action, if error.is_timeout() { "timeout" } else { "error" });
            transport_error(provider, idempotence, &error)
        })
}

/// Reads a response: a 2xx body parsed as `T`, anything else classified as an error.
pub(crate) async fn read_json<T: DeserializeOwned>(
    provider: &'static str,
    idempotence: Idempotence,
    response: Response,
) -> Result<T, ProviderError> {
    let status = response.status();
    if !status.is_success() {
        return Err(read_error(provider, idempotence, response).await);
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|error| transport_error(provider, idempotence, &error))?;
    serde_json::from_slice(&bytes).map_err(|error| {
        let message = format!("{provider}: answered {status} with an unexpected body: {error}");
        match idempotence {
            Idempotence::Idempotent => ProviderError::Retryable {
                status: Some(status.as_u16()),
                retry_after: None,
                message,
            },
            Idempotence::NonIdempotent => ProviderError::Ambiguous { message },
        }
    })
}

/// Reads a non-2xx response into a classified error.
pub(crate) async fn read_error(
    provider: &'static str,
    idempotence: Idempotence,
    response: Response,
) -> ProviderError {
    let status = response.status();
    let retry_after = retry_after(response.headers());
    // A body that cannot be read still leaves the status to classify by.
    let body = response.bytes().await.unwrap_or_default();
    classify(provider, idempotence, status, retry_after, &body)
}

/// `Retry-After` in seconds (integer or decimal); HTTP dates are ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let seconds: f64 = value.parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

/// The provider's error code and message from any of the three error body shapes: Twilio's
/// `{"code","message"}` (or RFC 9457 `{"code","detail","title"}`), Resend's `{"name","message"}`
/// and Clerk's `{"errors":[{"code","message","long_message"}]}`.
fn error_details(status: StatusCode, body: &[u8]) -> (Option<String>, String) {
    let text = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_owned);
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let (code, message) = match &parsed {
        Some(Value::Object(object)) => {
            if let Some(first) = object
                .get("errors")
                .and_then(Value::as_array)
                .and_then(|errors| errors.first())
            {
                (
                    text(first.get("code")),
                    text(first.get("long_message")).or_else(|| text(first.get("message"))),
                )
            } else {
                let code = text(object.get("name")).or_else(|| match object.get("code") {
                    Some(Value::Number(number)) => Some(number.to_string()),
                    other => text(other),
                });
                let message = text(object.get("message"))
                    .or_else(|| text(object.get("detail")))
                    .or_else(|| text(object.get("title")));
                (code, message)
            }
        }
        _ => (None, None),
    };
    let message = message
        .or_else(|| {
            let raw = String::from_utf8_lossy(body);
            let raw = raw.trim();
            (!raw.is_empty()).then(|| raw.to_owned())
        })
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("no body").to_owned());
    (code, message.chars().take(MAX_MESSAGE).collect())
}

/// Classifies an error response (the table in `error.rs`).
fn classify(
    provider: &str,
    idempotence: Idempotence,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> ProviderError {
    let (code, detail) = error_details(status, body);
    let message = format!("{provider}: {detail}");
    let concurrent =
        status == StatusCode::CONFLICT && code.as_deref() == Some("concurrent_idempotent_requests");
    let error = if status == StatusCode::TOO_MANY_REQUESTS
        || concurrent
        || (status.is_server_error()
            && (idempotence == Idempotence::Idempotent
                || status == StatusCode::SERVICE_UNAVAILABLE))
    {
        ProviderError::Retryable {
            status: Some(status.as_u16()),
            retry_after,
            message,
        }
    } else if status.is_server_error() {
        ProviderError::Ambiguous {
            message: format!("{provider}: answered {status}: {detail}"),
        }
    } else {
        ProviderError::Permanent {
            status: status.as_u16(),
            code,
            message,
        }
    };
    tracing::debug!(provider, status = status.as_u16(), %error, "provider call failed");
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_json(idempotence: Idempotence, status: u16, body: &str) -> ProviderError {
        let status = StatusCode::from_u16(status).unwrap();
        classify("test", idempotence, status, None, body.as_bytes())
    }

    #[test]
    fn resend_conflicts_split_into_retryable_and_permanent() {
        let concurrent = classify_json(
            Idempotence::Idempotent,
            409,
            r#"{"statusCode":409,"message":"in flight","name":"concurrent_idempotent_requests"}"#,
        );
        assert!(concurrent.is_retryable());
        let mismatch = classify_json(
            Idempotence::Idempotent,
            409,
            r#"{"statusCode":409,"message":"other payload","name":"invalid_idempotent_request"}"#,
        );
        assert_eq!(mismatch.code(), Some("invalid_idempotent_request"));
        assert!(mismatch.is_permanent());
    }

    #[test]
    fn server_errors_on_a_create_are_ambiguous_except_503() {
        assert!(classify_json(Idempotence::NonIdempotent, 500, "").is_ambiguous());
        assert!(classify_json(Idempotence::NonIdempotent, 504, "").is_ambiguous());
        assert!(classify_json(Idempotence::NonIdempotent, 503, "").is_retryable());
        assert!(classify_json(Idempotence::Idempotent, 500, "").is_retryable());
    }

    #[test]
    fn clerk_and_twilio_codes_are_extracted() {
        let clerk = classify_json(
            Idempotence::Idempotent,
            404,
            r#"{"errors":[{"message":"not found","long_message":"User not found","code":"resource_not_found"}]}"#,
        );
        assert_eq!(clerk.code(), Some("resource_not_found"));
        assert!(clerk.to_string().contains("User not found"));
        let twilio = classify_json(
            Idempotence::Idempotent,
            401,
            r#"{"code":20003,"message":"Authenticate","more_info":"","status":401}"#,
        );
        assert_eq!(twilio.code(), Some("20003"));
    }

    #[test]
    fn retry_after_accepts_seconds_and_ignores_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn join_path_keeps_the_base_prefix_and_origin() {
        let base = Url::parse("https://proxy.test/twilio/").unwrap();
        let url = join_path(&base, "/2010-04-01/Accounts.json?Page=1").unwrap();
        assert_eq!(
            url.as_str(),
            "https://proxy.test/twilio/2010-04-01/Accounts.json?Page=1"
        );
        assert!(join_path(&base, "//evil.test/x").is_none());
        assert!(join_path(&base, "https://evil.test/x").is_none());
    }

    #[test]
    fn endpoint_encodes_ids_as_one_segment() {
        let base = Url::parse("http://127.0.0.1:1/").unwrap();
        let url = endpoint(&base, &["v1", "users", "a/../b"]);
        assert_eq!(url.path(), "/v1/users/a%2F..%2Fb");
    }
}
