//! Operator accounts: name, role and an argon2id password hash; API tokens stored as SHA-256
//! hashes (`opt_<prefix>_<secret>`: the prefix finds the row, the hash is compared in constant time).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;
use serde::Serialize;
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use crate::secret::{hex, random_hex, sha256};

/// What an operator may do: a viewer reads, an operator reads and acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads every page and API read.
    Viewer,
    /// Reads and acts.
    Operator,
}

impl Role {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = AccountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            other => Err(AccountError::InvalidRole(other.to_owned())),
        }
    }
}

/// Errors of account management.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The name is empty, over 64 characters or not `[A-Za-z0-9._@-]`.
    #[error("an operator name must be 1 to 64 characters of letters, digits, '.', '_', '-', '@'")]
    InvalidName,
    /// Not `viewer` or `operator`.
    #[error("unknown role `{0}` (viewer or operator)")]
    InvalidRole(String),
    /// Shorter than 12 characters.
    #[error("a password must have at least 12 characters")]
    WeakPassword,
    /// Another operator has the name.
    #[error("an operator named `{0}` already exists")]
    NameTaken(String),
    /// No operator has the name.
    #[error("no operator named `{0}`")]
    NotFound(String),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// An operator as listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OperatorRow {
    /// Its id.
    pub id: i64,
    /// Its login name.
    pub name: String,
    /// `viewer` or `operator`.
    pub role: String,
    /// When it was made.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Active API tokens.
    pub tokens: i64,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

/// Hashes a password with argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| AccountError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

/// True when `password` matches the stored PHC hash.
pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// The password's hash, once the name and the password are acceptable (12 characters at least).
fn checked_hash(name: &str, password: &str) -> Result<String, AccountError> {
    if !valid_name(name) {
        return Err(AccountError::InvalidName);
    }
    if password.chars().count() < 12 {
        return Err(AccountError::WeakPassword);
    }
    hash_password(password)
}

/// Adds an operator; returns its id.
pub async fn add(
    pool: &PgPool,
    name: &str,
    role: Role,
    password: &str,
) -> Result<i64, AccountError> {
    let hash = checked_hash(name, password)?;
    let id: Option<i64> = sqlx::query_scalar(
        "insert into onboard.operator (name, role, password_hash) values ($1, $2, $3)
         on conflict (name) do nothing returning id",
    )
    .bind(name)
    .bind(role.as_str())
    .bind(hash)
    .fetch_optional(pool)
    .await?;
    id.ok_or_else(|| AccountError::NameTaken(name.to_owned()))
}

/// Sets an existing operator's password and role, or adds it (used by `onboard dev`).
pub async fn upsert(
    pool: &PgPool,
    name: &str,
    role: Role,
    password: &str,
) -> Result<i64, AccountError> {
    let hash = checked_hash(name, password)?;
    Ok(sqlx::query_scalar(
        "insert into onboard.operator (name, role, password_hash) values ($1, $2, $3)
         on conflict (name) do update set role = $2, password_hash = $3 returning id",
    )
    .bind(name)
    .bind(role.as_str())
    .bind(hash)
    .fetch_one(pool)
    .await?)
}

/// Removes an operator; its sessions and tokens end with it.
pub async fn remove(pool: &PgPool, name: &str) -> Result<(), AccountError> {
    let done = sqlx::query("delete from onboard.operator where name = $1")
        .bind(name)
        .execute(pool)
        .await?
        .rows_affected();
    if done == 0 {
        return Err(AccountError::NotFound(name.to_owned()));
    }
    Ok(())
}

/// Every operator, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<OperatorRow>, sqlx::Error> {
    sqlx::query_as(
        "select o.id, o.name, o.role, o.created_at,
                (select count(*) from onboard.operator_token t
                  where t.operator_id = o.id and t.revoked_at is null) as tokens
           from onboard.operator o order by o.name",
    )
    .fetch_all(pool)
    .await
}

/// An authenticated operator.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

fn identity(id: i64, name: String, role: &str) -> Identity {
    Identity {
        id,
        name,
        role: role.parse().unwrap_or(Role::Viewer),
    }
}

/// The operator named `name` when `password` is theirs.
pub async fn check_login(
    pool: &PgPool,
    name: &str,
    password: &str,
) -> Result<Option<Identity>, sqlx::Error> {
    let row: Option<(i64, String, String)> =
        sqlx::query_as("select id, role, password_hash from onboard.operator where name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    let password = password.to_owned();
    // An unknown name costs one hash too, so the answer's timing does not tell names apart.
    let stored = row.as_ref().map(|r| r.2.clone());
    let ok = tokio::task::spawn_blocking(move || match stored {
        Some(stored) => verify_password(&password, &stored),
        None => {
            static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            let dummy =
                DUMMY.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default());
            let _ = verify_password(&password, dummy);
            false
        }
    })
    .await
    .unwrap_or(false);
    Ok(row
        .filter(|_| ok)
        .map(|(id, role, _)| identity(id, name.to_owned(), &role)))
}

/// Makes an API token for the operator; the token is returned once and never stored.
pub async fn create_token(pool: &PgPool, name: &str) -> Result<(i64, String), AccountError> {
    let operator: Option<i64> =
        sqlx::query_scalar("select id from onboard.operator where name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    let operator = operator.ok_or_else(|| AccountError::NotFound(name.to_owned()))?;
    let prefix = random_hex(8);
    let token = format!("opt_{prefix}_{}", random_hex(32));
    let id = sqlx::query_scalar(
        "insert into onboard.operator_token (operator_id, prefix, token_hash) values ($1, $2, $3) returning id",
    )
    .bind(operator)
    .bind(&prefix)
    .bind(&sha256(&token)[..])
    .fetch_one(pool)
    .await?;
    Ok((id, token))
}

/// Revokes every active token of the operator; returns how many.
pub async fn revoke_tokens(pool: &PgPool, name: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "update onboard.operator_token t set revoked_at = now()
           from onboard.operator o
          where o.id = t.operator_id and o.name = $1 and t.revoked_at is null",
    )
    .bind(name)
    .execute(pool)
    .await?
    .rows_affected())
}

/// The operator of an active token, or `None` for a malformed, unknown or revoked one.
pub async fn authenticate_token(
    pool: &PgPool,
    presented: &str,
) -> Result<Option<Identity>, sqlx::Error> {
    let Some(prefix) = token_prefix(presented) else {
        return Ok(None);
    };
    let row: Option<(i64, String, String, Vec<u8>)> = sqlx::query_as(
        "select o.id, o.name, o.role, t.token_hash
           from onboard.operator_token t join onboard.operator o on o.id = t.operator_id
          where t.prefix = $1 and t.revoked_at is null",
    )
    .bind(prefix)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(id, name, role, stored)| {
        bool::from(stored.ct_eq(&sha256(presented)[..])).then(|| identity(id, name, &role))
    }))
}

fn token_prefix(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("opt_")?;
    let (prefix, secret) = rest.split_once('_')?;
    let is_hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    (prefix.len() == 16 && secret.len() == 64 && is_hex(prefix) && is_hex(secret)).then_some(prefix)
}

/// A fresh random password (dev operator).
pub fn random_password() -> String {
    hex(&{
        let mut b = [0u8; 12];
        rand::rng().fill_bytes(&mut b);
        b
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_only_its_password() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterY", &hash));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn names_and_tokens_are_checked() {
        assert!(valid_name("ada.l@x"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(token_prefix(&format!("opt_{}_{}", "a".repeat(16), "b".repeat(64))).is_some());
        assert!(token_prefix("opt_x_y").is_none());
    }
}
