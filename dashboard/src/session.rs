//! Server-side sessions: the cookie holds a random secret, the database its SHA-256, the
//! operator, a CSRF token and an expiry. Logout deletes the row.

use std::time::Duration;

use sqlx::PgPool;

use crate::account::Identity;
use crate::secret::{random_hex, sha256};

/// The session cookie's name.
pub const COOKIE: &str = "onboard_session";

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who it belongs to.
    pub identity: Identity,
    /// The token every POST it authenticates must carry.
    pub csrf: String,
    /// SHA-256 of its cookie secret (its key).
    pub key: Vec<u8>,
}

/// Starts a session; returns the cookie secret.
pub async fn create(pool: &PgPool, operator_id: i64, ttl: Duration) -> Result<String, sqlx::Error> {
    let secret = random_hex(32);
    sqlx::query(
        "insert into onboard.operator_session (token_hash, operator_id, csrf_token, expires_at)
         values ($1, $2, $3, now() + $4 * interval '1 second')",
    )
    .bind(&sha256(&secret)[..])
    .bind(operator_id)
    .bind(random_hex(32))
    .bind(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2) as f64)
    .execute(pool)
    .await?;
    Ok(secret)
}

/// The unexpired session of a cookie secret.
pub async fn find(pool: &PgPool, secret: &str) -> Result<Option<Session>, sqlx::Error> {
    let key = sha256(secret).to_vec();
    let row: Option<(i64, String, String, String)> = sqlx::query_as(
        "select o.id, o.name, o.role, s.csrf_token
           from onboard.operator_session s join onboard.operator o on o.id = s.operator_id
          where s.token_hash = $1 and s.expires_at > now()",
    )
    .bind(&key)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(id, name, role, csrf)| Session {
        identity: Identity {
            id,
            name,
            role: role.parse().unwrap_or(crate::account::Role::Viewer),
        },
        csrf,
        key,
    }))
}

/// Ends a session (logout), and drops expired ones while at it.
pub async fn delete(pool: &PgPool, key: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("delete from onboard.operator_session where token_hash = $1 or expires_at < now() - interval '1 day'")
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}
