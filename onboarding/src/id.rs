//! Typed ids and values parsed at the edge (parse, don't validate): Clerk organization and
//! user ids, email addresses, idempotency keys and Svix message ids.

use serde::Serialize;

/// A value that failed to parse; the message says what was expected (never echoes secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub &'static str);

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn parse_prefixed_id(value: &str, prefix: &str, message: &'static str) -> Result<String, Invalid> {
    let rest = value.strip_prefix(prefix).ok_or(Invalid(message))?;
    if rest.is_empty() || value.len() > 128 || !rest.chars().all(is_id_char) {
        return Err(Invalid(message));
    }
    Ok(value.to_owned())
}

/// A Clerk organization id (`org_…`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ClerkOrgId(String);

impl ClerkOrgId {
    /// Parses `org_` followed by letters, digits or `_` (at most 128 characters in all).
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        parse_prefixed_id(value, "org_", "must be a Clerk organization id (org_…)").map(ClerkOrgId)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A Clerk user id (`user_…`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ClerkUserId(String);

impl ClerkUserId {
    /// Parses `user_` followed by letters, digits or `_` (at most 128 characters in all).
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        parse_prefixed_id(value, "user_", "must be a Clerk user id (user_…)").map(ClerkUserId)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, checked for shape only (one `@`, a dotted domain, no spaces).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Parses `local@domain.tld`, at most 254 characters, no whitespace or control characters.
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        const MESSAGE: &str = "must be an email address";
        if value.len() > 254 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Invalid(MESSAGE));
        }
        let (local, domain) = value.split_once('@').ok_or(Invalid(MESSAGE))?;
        let domain_ok = !domain.contains('@')
            && domain.contains('.')
            && domain.split('.').all(|label| !label.is_empty());
        if local.is_empty() || !domain_ok {
            return Err(Invalid(MESSAGE));
        }
        Ok(EmailAddress(value.to_owned()))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An `Idempotency-Key`: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a key: 1 to 255 visible ASCII characters.
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        if value.is_empty() || value.len() > 255 || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Invalid("must be 1 to 255 visible ASCII characters"));
        }
        Ok(IdempotencyKey(value.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A Svix message id (`svix-id`): 1 to 255 visible ASCII characters, no `.` (the signed content
/// is `id.timestamp.body`, so a `.` in the id would make it ambiguous).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SvixId(String);

impl SvixId {
    /// Parses a message id.
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        let ok = !value.is_empty()
            && value.len() <= 255
            && value.bytes().all(|b| b.is_ascii_graphic() && b != b'.');
        if ok {
            Ok(SvixId(value.to_owned()))
        } else {
            Err(Invalid(
                "must be 1 to 255 visible ASCII characters without `.`",
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clerk_ids_need_their_prefix_and_a_plain_tail() {
        assert!(ClerkOrgId::parse("org_2g7np7Hrk0SN6kj5EDMLDaKNL0S").is_ok());
        assert!(ClerkOrgId::parse("org_").is_err());
        assert!(ClerkOrgId::parse("user_abc").is_err());
        assert!(ClerkOrgId::parse("org_a.b").is_err());
        assert!(ClerkUserId::parse("user_2g7np7Hrk0SN6kj5EDMLDaKNL0S").is_ok());
        assert!(ClerkUserId::parse("org_abc").is_err());
    }

    #[test]
    fn email_addresses_are_checked_for_shape() {
        assert!(EmailAddress::parse("ada@example.com").is_ok());
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a da@example.com",
            "a@b@example.com",
            "ada@example..com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(IdempotencyKey::parse("k-1").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("a b").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
    }
}
