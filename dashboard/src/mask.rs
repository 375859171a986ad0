//! Masking of personal data (emails, phone numbers) until an operator reveals it, and of
//! secrets, which are never shown.

use serde_json::Value;

/// Masks an email: first character of the local part and the top-level domain are kept.
pub fn email(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first = local.chars().next().map(String::from).unwrap_or_default();
            let tld = domain.rsplit_once('.').map_or("", |(_, tld)| tld);
            format!("{first}***@***.{tld}")
        }
        None => "***".into(),
    }
}

/// Masks a phone number: only its last two digits are kept.
pub fn phone(number: &str) -> String {
    let digits: Vec<char> = number.chars().filter(char::is_ascii_digit).collect();
    let tail: String = digits[digits.len().saturating_sub(2)..].iter().collect();
    format!("***{tail}")
}

fn looks_like_email(s: &str) -> bool {
    s.split_once('@')
        .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !s.contains(' '))
}

fn is_phone_key(key: &str) -> bool {
    key.contains("phone")
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "secret",
        "password",
        "token",
        "auth",
        "signature",
        "api_key",
    ]
    .iter()
    .any(|k| key.contains(k))
}

/// Masks every email and phone number in a JSON value; `reveal` keeps them. Secrets are
/// always replaced.
pub fn json(value: &Value, reveal: bool) -> Value {
    walk(value, None, reveal)
}

fn walk(value: &Value, key: Option<&str>, reveal: bool) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), walk(v, Some(k), reveal)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| walk(v, key, reveal)).collect()),
        Value::String(s) if key.is_some_and(is_secret_key) => Value::String(if s.is_empty() {
            String::new()
        } else {
            "[secret]".into()
        }),
        Value::String(s)
            if !reveal
                && key.is_some_and(is_phone_key)
                && s.chars().any(|c| c.is_ascii_digit()) =>
        {
            Value::String(phone(s))
        }
        Value::String(s) if !reveal && looks_like_email(s) => Value::String(email(s)),
        other => other.clone(),
    }
}

/// Masks emails in free text (error messages, raw bodies) unless revealed.
pub fn text(text: &str, reveal: bool) -> String {
    if reveal {
        return text.to_owned();
    }
    text.split_inclusive(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .map(|word| {
            let trimmed =
                word.trim_end_matches(|c: char| c.is_whitespace() || c == '"' || c == ',');
            if looks_like_email(trimmed) {
                format!("{}{}", email(trimmed), &word[trimmed.len()..])
            } else {
                word.to_owned()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn emails_and_phones_are_masked_until_revealed() {
        let v = json!({"creator": {"email": "ada@example.com", "phone_number": "+1 555 0100"},
                       "email_addresses": [{"email_address": "bob@x.org"}], "name": "Acme",
                       "svix_signature": "v1,abc"});
        let masked = json(&v, false);
        assert_eq!(masked["creator"]["email"], "a***@***.com");
        assert_eq!(masked["creator"]["phone_number"], "***00");
        assert_eq!(
            masked["email_addresses"][0]["email_address"],
            "b***@***.org"
        );
        assert_eq!(masked["name"], "Acme");
        assert_eq!(masked["svix_signature"], "[secret]");
        let shown = json(&v, true);
        assert_eq!(shown["creator"]["email"], "ada@example.com");
        assert_eq!(shown["svix_signature"], "[secret]");
        assert_eq!(
            text("no email for ada@example.com, sorry", false),
            "no email for a***@***.com, sorry"
        );
    }
}
