//! The CRM's default role→permission matrix (`reference/permissions.md`), as data, and the
//! `default_permissions` step's writes.

use sqlx::PgConnection;

/// The CRM's roles.
pub const ROLES: [&str; 3] = ["ADMIN", "AGENT", "VIEWER"];

/// Each permission with the roles that hold it by default.
pub const MATRIX: [(&str, &[&str]); 27] = [
    ("contacts:view", &["ADMIN", "AGENT", "VIEWER"]),
    ("contacts:create", &["ADMIN", "AGENT"]),
    ("contacts:edit", &["ADMIN", "AGENT"]),
    ("contacts:delete", &["ADMIN"]),
    ("deals:view", &["ADMIN", "AGENT", "VIEWER"]),
    ("deals:create", &["ADMIN", "AGENT"]),
    ("deals:edit", &["ADMIN", "AGENT"]),
    ("deals:delete", &["ADMIN"]),
    ("deals:view_commissions", &["ADMIN"]),
    ("properties:view", &["ADMIN", "AGENT", "VIEWER"]),
    ("properties:create", &["ADMIN", "AGENT"]),
    ("properties:edit", &["ADMIN"]),
    ("properties:delete", &["ADMIN"]),
    ("communications:view", &["ADMIN", "AGENT", "VIEWER"]),
    ("communications:send", &["ADMIN", "AGENT"]),
    ("communications:export", &["ADMIN"]),
    ("org:view_members", &["ADMIN"]),
    ("org:invite_members", &["ADMIN"]),
    ("org:remove_members", &["ADMIN"]),
    ("org:edit_settings", &["ADMIN"]),
    ("org:view_billing", &["ADMIN"]),
    ("phone:make_calls", &["ADMIN", "AGENT"]),
    ("phone:view_recordings", &["ADMIN"]),
    ("phone:manage_numbers", &["ADMIN"]),
    ("ai:use_voice_search", &["ADMIN", "AGENT", "VIEWER"]),
    ("ai:view_sentiment", &["ADMIN", "AGENT"]),
    ("ai:export_insights", &["ADMIN"]),
];

/// Every (role, permission) pair of the matrix.
pub fn grants() -> Vec<(&'static str, &'static str)> {
    MATRIX
        .iter()
        .flat_map(|(permission, roles)| roles.iter().map(move |role| (*role, *permission)))
        .collect()
}

/// Inserts the organization's default grants; idempotent. Returns how many rows exist now.
///
/// One statement: the count reads the rows there were before it (its snapshot) and adds the
/// ones it inserted. The caller holds the saga's lock, so no other writer adds grants between.
pub async fn grant_defaults(
    conn: &mut PgConnection,
    organization_id: i64,
) -> Result<i64, sqlx::Error> {
    let (roles, permissions): (Vec<&str>, Vec<&str>) = grants().into_iter().unzip();
    sqlx::query_scalar(
        "with inserted as (
             insert into onboard.role_permission (organization_id, role, permission)
             select $1, role, permission from unnest($2::text[], $3::text[]) as g(role, permission)
             on conflict do nothing
             returning 1
         )
         select (select count(*) from inserted)
              + (select count(*) from onboard.role_permission where organization_id = $1)",
    )
    .bind(organization_id)
    .bind(&roles)
    .bind(&permissions)
    .fetch_one(conn)
    .await
}

/// Deletes the organization's grants (the step's compensation); returns how many.
pub async fn revoke_defaults(
    conn: &mut PgConnection,
    organization_id: i64,
) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("delete from onboard.role_permission where organization_id = $1")
            .bind(organization_id)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_holds_all_27_and_viewer_is_read_only() {
        let grants = grants();
        assert_eq!(grants.iter().filter(|(r, _)| *r == "ADMIN").count(), 27);
        let viewer: Vec<_> = grants
            .iter()
            .filter(|(r, _)| *r == "VIEWER")
            .map(|(_, p)| *p)
            .collect();
        assert!(
            viewer
                .iter()
                .all(|p| p.ends_with(":view") || *p == "ai:use_voice_search"),
            "{viewer:?}"
        );
        assert_eq!(grants.iter().filter(|(r, _)| *r == "AGENT").count(), 13);
    }
}
