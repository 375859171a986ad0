//! Organizations: the last-writer-wins upsert shared by Clerk events and the saga's first step,
//! stubs for organizations named before they are seen, and the tombstone.

use sqlx::PgConnection;
use sqlx::types::Json;

/// One organization snapshot, as a Clerk payload (or the onboarding request) describes it.
///
/// Every field replaces the stored one when the snapshot wins: `None` means "none", not
/// "unknown". A source without a Clerk clock (the onboarding API) passes `updated_at_ms: 0`, so
/// any Clerk snapshot wins over it.
#[derive(Debug, Clone, PartialEq)]
pub struct OrgUpsert {
    /// `org_…`.
    pub clerk_org_id: String,
    /// Display name.
    pub name: Option<String>,
    /// URL slug.
    pub slug: Option<String>,
    /// Logo URL.
    pub image_url: Option<String>,
    /// Clerk user id of the creator.
    pub created_by: Option<String>,
    /// Clerk's `public_metadata`.
    pub public_metadata: Option<serde_json::Value>,
    /// `data.updated_at`, Unix milliseconds: the snapshot's clock.
    pub updated_at_ms: i64,
}

// Last writer wins on (clock, content): at equal clocks the greater content (jsonb order)
// wins, so the result never depends on delivery order. A stub (null clock) loses to any
// snapshot. `deleted_at`, `onboarding_status` and `twilio_subaccount_sid` are never touched:
// a tombstoned organization keeps its tombstone while its fields still converge.
const UPSERT: &str = "
insert into onboard.organization as o
       (clerk_org_id, name, slug, image_url, created_by, public_metadata, clerk_updated_at)
values ($1, $2, $3, $4, $5, $6, $7)
on conflict (clerk_org_id) do update
   set name = excluded.name, slug = excluded.slug, image_url = excluded.image_url,
       created_by = excluded.created_by, public_metadata = excluded.public_metadata,
       clerk_updated_at = excluded.clerk_updated_at, updated_at = now()
 where o.clerk_updated_at is null
    or (o.clerk_updated_at,
        jsonb_build_array(o.name, o.slug, o.image_url, o.created_by, o.public_metadata))
     < (excluded.clerk_updated_at,
        jsonb_build_array(excluded.name, excluded.slug, excluded.image_url, excluded.created_by,
                          excluded.public_metadata))";

/// Upserts an organization, last writer wins on `updated_at_ms` (ties: the greater content);
/// creates the row if missing; never un-deletes a tombstoned one.
pub async fn upsert_organization(
    conn: &mut PgConnection,
    org: &OrgUpsert,
) -> Result<(), sqlx::Error> {
    sqlx::query(UPSERT)
        .bind(&org.clerk_org_id)
        .bind(&org.name)
        .bind(&org.slug)
        .bind(&org.image_url)
        .bind(&org.created_by)
        .bind(org.public_metadata.as_ref().map(Json))
        .bind(org.updated_at_ms)
        .execute(conn)
        .await?;
    Ok(())
}

/// Our id of a Clerk organization (also for a tombstoned one), if we have a row for it.
pub async fn organization_id(
    conn: &mut PgConnection,
    clerk_org_id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("select id from onboard.organization where clerk_org_id = $1")
        .bind(clerk_org_id)
        .fetch_optional(conn)
        .await
}

/// An organization row locked for the rest of the caller's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockedOrganization {
    /// Our id.
    pub id: i64,
    /// True once `organization.deleted` tombstoned it.
    pub deleted: bool,
}

/// Locks an organization's row, creating a stub (id only) when it is unknown. Every membership
/// and invitation write holds this lock, so writes about one organization are serialised.
pub async fn lock_organization(
    conn: &mut PgConnection,
    clerk_org_id: &str,
) -> Result<LockedOrganization, sqlx::Error> {
    sqlx::query("insert into onboard.organization (clerk_org_id) values ($1) on conflict (clerk_org_id) do nothing")
        .bind(clerk_org_id)
        .execute(&mut *conn)
        .await?;
    // FOR NO KEY UPDATE: serialises our writers without blocking foreign-key checks of
    // tenant rows (which take FOR KEY SHARE).
    let (id, deleted): (i64, bool) = sqlx::query_as(
        "select id, deleted_at is not null from onboard.organization where clerk_org_id = $1 for no key update",
    )
    .bind(clerk_org_id)
    .fetch_one(conn)
    .await?;
    Ok(LockedOrganization { id, deleted })
}

/// Tombstones an organization (`deleted_at`, `onboarding_status = 'deleted'`), creating the
/// tombstone if the organization is unknown. Returns its id when this call deleted it, `None`
/// when it already was deleted.
pub async fn delete_organization(
    conn: &mut PgConnection,
    clerk_org_id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "insert into onboard.organization as o (clerk_org_id, deleted_at, onboarding_status)
         values ($1, now(), 'deleted')
         on conflict (clerk_org_id) do update
            set deleted_at = now(), onboarding_status = 'deleted', updated_at = now()
          where o.deleted_at is null
         returning id",
    )
    .bind(clerk_org_id)
    .fetch_optional(conn)
    .await
}

/// The current slug of a Clerk organization, if we have a row for it with one.
pub async fn organization_slug(
    pool: &sqlx::PgPool,
    clerk_org_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar::<_, Option<String>>(
        "select slug from onboard.organization where clerk_org_id = $1",
    )
    .bind(clerk_org_id)
    .fetch_optional(pool)
    .await
    .map(Option::flatten)
}
