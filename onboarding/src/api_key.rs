//! Onboarding API keys: made by `onboard api-key create` (the key is shown once), revoked by
//! `api-key revoke`. Only a SHA-256 of each key is stored. A key is
//! `onb_<prefix>_<secret>`: the prefix finds the row, the hash is compared in constant time.

use rand::RngCore;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// The name is empty, longer than 100 characters or has control characters.
    #[error("a key name must be 1 to 100 characters without control characters")]
    InvalidName,
    /// An active key already has this name.
    #[error("an active API key named `{0}` already exists")]
    NameTaken(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(&bytes)
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The prefix of a well-formed key (`onb_<16 hex>_<64 hex>`), or `None`.
fn prefix_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("onb_")?;
    let (prefix, secret) = rest.split_once('_')?;
    let is_hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    (prefix.len() == 16 && secret.len() == 64 && is_hex(prefix) && is_hex(secret)).then_some(prefix)
}

/// Makes a key named `name`; returns its id and the key, which is never stored or shown again.
pub async fn create(pool: &PgPool, name: &str) -> Result<(i64, SecretString), ApiKeyError> {
    let mut conn = pool.acquire().await?;
    insert(&mut conn, name).await
}

/// Revokes the active key named `name`, if any, and makes a new one in its place, in one
/// transaction: at most one key of that name is ever active (`onboard dev`'s `dev` key).
pub async fn rotate(pool: &PgPool, name: &str) -> Result<(i64, SecretString), ApiKeyError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "update onboard.api_key set revoked_at = now() where revoked_at is null and name = $1",
    )
    .bind(name.trim())
    .execute(&mut *tx)
    .await?;
    let made = insert(&mut tx, name).await?;
    tx.commit().await?;
    Ok(made)
}

async fn insert(
    conn: &mut sqlx::PgConnection,
    name: &str,
) -> Result<(i64, SecretString), ApiKeyError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiKeyError::InvalidName);
    }
    // 8 random bytes of prefix, 32 of secret (256 bits): a plain hash is enough, no KDF.
    let prefix = random_hex(8);
    let key = format!("onb_{prefix}_{}", random_hex(32));
    let inserted: Option<i64> = sqlx::query_scalar(
        "insert into onboard.api_key (name, prefix, key_hash) values ($1, $2, $3)
         on conflict (name) where revoked_at is null do nothing
         returning id",
    )
    .bind(name)
    .bind(&prefix)
    .bind(&hash(&key)[..])
    .fetch_optional(conn)
    .await?;
    match inserted {
        Some(id) => Ok((id, SecretString::from(key))),
        None => Err(ApiKeyError::NameTaken(name.to_owned())),
    }
}

/// Revokes the active key with this name, or with this id; returns how many were revoked (0 or 1).
pub async fn revoke(pool: &PgPool, name_or_id: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "update onboard.api_key set revoked_at = now()
          where revoked_at is null and (name = $1 or id::text = $1)",
    )
    .bind(name_or_id.trim())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The id of the active key `presented`, or `None` for a malformed, unknown or revoked key.
pub async fn authenticate(pool: &PgPool, presented: &str) -> Result<Option<i64>, sqlx::Error> {
    let Some(prefix) = prefix_of(presented) else {
        return Ok(None);
    };
    let row: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "select id, key_hash from onboard.api_key where prefix = $1 and revoked_at is null",
    )
    .bind(prefix)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(id, stored)| bool::from(stored.ct_eq(&hash(presented)[..])).then_some(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_keys_have_a_prefix() {
        let key = format!("onb_{}_{}", "a".repeat(16), "b".repeat(64));
        assert_eq!(prefix_of(&key), Some("aaaaaaaaaaaaaaaa"));
        assert_eq!(prefix_of("onb_short_key"), None);
        assert_eq!(
            prefix_of(&format!("onb_{}_{}", "g".repeat(16), "b".repeat(64))),
            None
        );
        assert_eq!(prefix_of(""), None);
    }
}
