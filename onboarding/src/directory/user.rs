//! Users (`app_user`): snapshots from `user.*` events, last writer wins; the public data that
//! membership events carry, used only until a `user.*` snapshot arrives; the tombstone.

use sqlx::PgConnection;

/// A user snapshot from a `user.created` / `user.updated` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserUpsert {
    /// `user_…`.
    pub clerk_user_id: String,
    /// The `email_addresses` entry whose id is `primary_email_address_id`.
    pub primary_email: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// Username.
    pub username: Option<String>,
    /// Avatar URL.
    pub image_url: Option<String>,
    /// `data.updated_at`, Unix milliseconds.
    pub updated_at_ms: i64,
}

/// The `public_user_data` of a membership payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUserData {
    /// `user_…`.
    pub clerk_user_id: String,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// Avatar URL.
    pub image_url: Option<String>,
    /// The membership's `updated_at`, Unix milliseconds.
    pub updated_at_ms: i64,
}

/// What a write did to a user row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserWrite {
    /// The row was created or replaced.
    Applied,
    /// The stored data is newer (or authoritative): nothing changed.
    Stale,
    /// The user is deleted: nothing changed, and the payload should be purged.
    Deleted,
}

// Last writer wins on (clock, content), like organizations; a tombstone blocks every write.
const UPSERT: &str = "
insert into onboard.app_user as u
       (clerk_user_id, primary_email, first_name, last_name, username, image_url, clerk_updated_at)
values ($1, $2, $3, $4, $5, $6, $7)
on conflict (clerk_user_id) do update
   set primary_email = excluded.primary_email, first_name = excluded.first_name,
       last_name = excluded.last_name, username = excluded.username, image_url = excluded.image_url,
       clerk_updated_at = excluded.clerk_updated_at, updated_at = now()
 where u.deleted_at is null
   and (u.clerk_updated_at is null
        or (u.clerk_updated_at,
            jsonb_build_array(u.primary_email, u.first_name, u.last_name, u.username, u.image_url))
         < (excluded.clerk_updated_at,
            jsonb_build_array(excluded.primary_email, excluded.first_name, excluded.last_name,
                              excluded.username, excluded.image_url)))
returning id";

// Public data fills a row only while no `user.*` snapshot was stored (clerk_updated_at null),
// last writer wins among memberships on (membership clock, content).
const UPSERT_PUBLIC: &str = "
insert into onboard.app_user as u (clerk_user_id, first_name, last_name, image_url, public_data_updated_at)
values ($1, $2, $3, $4, $5)
on conflict (clerk_user_id) do update
   set first_name = excluded.first_name, last_name = excluded.last_name,
       image_url = excluded.image_url, public_data_updated_at = excluded.public_data_updated_at,
       updated_at = now()
 where u.deleted_at is null and u.clerk_updated_at is null
   and (u.public_data_updated_at is null
        or (u.public_data_updated_at, jsonb_build_array(u.first_name, u.last_name, u.image_url))
         < (excluded.public_data_updated_at,
            jsonb_build_array(excluded.first_name, excluded.last_name, excluded.image_url)))
returning id";

/// Upserts a user snapshot, last writer wins on `updated_at_ms` (ties: the greater content).
pub async fn upsert_user(
    conn: &mut PgConnection,
    user: &UserUpsert,
) -> Result<UserWrite, sqlx::Error> {
    let applied: Option<i64> = sqlx::query_scalar(UPSERT)
        .bind(&user.clerk_user_id)
        .bind(&user.primary_email)
        .bind(&user.first_name)
        .bind(&user.last_name)
        .bind(&user.username)
        .bind(&user.image_url)
        .bind(user.updated_at_ms)
        .fetch_optional(&mut *conn)
        .await?;
    outcome(conn, &user.clerk_user_id, applied.is_some()).await
}

/// Creates or refreshes a user from a membership's public data, unless a `user.*` snapshot
/// (authoritative) or a tombstone is stored.
pub async fn upsert_public_user_data(
    conn: &mut PgConnection,
    data: &PublicUserData,
) -> Result<UserWrite, sqlx::Error> {
    let applied: Option<i64> = sqlx::query_scalar(UPSERT_PUBLIC)
        .bind(&data.clerk_user_id)
        .bind(&data.first_name)
        .bind(&data.last_name)
        .bind(&data.image_url)
        .bind(data.updated_at_ms)
        .fetch_optional(&mut *conn)
        .await?;
    outcome(conn, &data.clerk_user_id, applied.is_some()).await
}

async fn outcome(
    conn: &mut PgConnection,
    clerk_user_id: &str,
    applied: bool,
) -> Result<UserWrite, sqlx::Error> {
    if applied {
        return Ok(UserWrite::Applied);
    }
    Ok(if is_deleted_user(conn, clerk_user_id).await? {
        UserWrite::Deleted
    } else {
        UserWrite::Stale
    })
}

/// True when `user.deleted` tombstoned this user.
pub async fn is_deleted_user(
    conn: &mut PgConnection,
    clerk_user_id: &str,
) -> Result<bool, sqlx::Error> {
    let deleted: Option<bool> = sqlx::query_scalar(
        "select deleted_at is not null from onboard.app_user where clerk_user_id = $1",
    )
    .bind(clerk_user_id)
    .fetch_optional(conn)
    .await?;
    Ok(deleted == Some(true))
}

/// Tombstones a user and nulls their personal data in `app_user` (creating the tombstone if
/// the user is unknown, so older events cannot create them later). Returns the primary email
/// the row held, for purging it elsewhere.
pub async fn delete_user(
    conn: &mut PgConnection,
    clerk_user_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    let email: Option<Option<String>> = sqlx::query_scalar(
        "select primary_email from onboard.app_user where clerk_user_id = $1 for update",
    )
    .bind(clerk_user_id)
    .fetch_optional(&mut *conn)
    .await?;
    sqlx::query(
        "insert into onboard.app_user as u (clerk_user_id, deleted_at) values ($1, now())
         on conflict (clerk_user_id) do update
            set primary_email = null, first_name = null, last_name = null, username = null,
                image_url = null, deleted_at = coalesce(u.deleted_at, now()), updated_at = now()",
    )
    .bind(clerk_user_id)
    .execute(conn)
    .await?;
    Ok(email.flatten())
}

/// How to address a user by email: the primary address and the first name beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressee {
    /// The primary email address.
    pub email: String,
    /// The first name, when known.
    pub first_name: Option<String>,
}

/// A user's primary email and first name; `None` if the user is unknown, deleted, or has no
/// email.
pub async fn addressee(
    conn: &mut PgConnection,
    clerk_user_id: &str,
) -> Result<Option<Addressee>, sqlx::Error> {
    let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(
        "select primary_email, first_name from onboard.app_user where clerk_user_id = $1 and deleted_at is null",
    )
    .bind(clerk_user_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.and_then(|(email, first_name)| {
        Some(Addressee {
            email: email?,
            first_name,
        })
    }))
}
