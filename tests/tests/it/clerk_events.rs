//! Clerk events applied to the directory (DESIGN.md §5) on a real PostgreSQL: every fixture,
//! role mapping, invitations converging with memberships, out-of-order and duplicate delivery
//! (including a proptest against an independent model), the `user.deleted` purge, offboarding
//! on `organization.deleted`, row-level security, and the worker's `clerk` queue.
//!
//! Events are stored in `onboard.inbox` as the ingress would, then applied with
//! `onboarding::clerk_event::handle` in their own transaction, deterministically: no worker, no sleeps
//! (except the one test of the worker itself, which waits on a condition).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use integration_tests::{fresh_db, wait_for};
use onboarding::clerk_event::{self, EventError};
use onboarding::directory::{self, OrgUpsert, RoleMapping};
use proptest::prelude::*;
use serde_json::{Value, json};
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, PgPool};

static NEXT_MESSAGE: AtomicU64 = AtomicU64::new(0);

fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/clerk/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

/// An envelope of `event_type` around `data`, shaped like Clerk's.
fn envelope(event_type: &str, data: Value) -> Value {
    json!({
        "event_attributes": {"http_request": {"client_ip": "203.0.113.9", "user_agent": "Mozilla/5.0 (test)"}},
        "object": "event",
        "type": event_type,
        "instance_id": "ins_test",
        "timestamp": 1_716_883_200,
        "data": data,
    })
}

/// Stores a delivery in the inbox, as the ingress does (its own committed transaction).
async fn store(pool: &PgPool, event: &Value) -> i64 {
    let svix_id = format!("msg_test_{}", NEXT_MESSAGE.fetch_add(1, Ordering::SeqCst));
    sqlx::query_scalar(
        "insert into onboard.inbox (svix_id, event_type, payload, svix_timestamp, svix_signature)
         values ($1, $2, $3, 0, 'v1,test') returning id",
    )
    .bind(svix_id)
    .bind(event["type"].as_str().expect("an event type"))
    .bind(Json(event))
    .fetch_one(pool)
    .await
    .expect("store the delivery")
}

/// Runs the event's job: `handle` in a transaction, committed on success.
async fn run(
    pool: &PgPool,
    inbox_id: i64,
    event_type: &str,
    roles: &RoleMapping,
) -> Result<(), EventError> {
    let mut tx = pool.begin().await.expect("begin");
    let result =
        clerk_event::handle_with(&mut tx, &format!("clerk.{event_type}"), inbox_id, roles).await;
    if result.is_ok() {
        tx.commit().await.expect("commit");
    }
    result
}

/// Stores a delivery and runs its job with the default role mapping.
async fn deliver(pool: &PgPool, event: &Value) -> Result<i64, EventError> {
    let id = store(pool, event).await;
    run(
        pool,
        id,
        event["type"].as_str().unwrap(),
        &RoleMapping::default(),
    )
    .await?;
    Ok(id)
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .expect(sql)
}

/// (state, role, clerk_role, clerk_user_id, clerk_invitation_id, clerk_membership_id) of every
/// membership row of an organization, ordered by id.
async fn memberships(
    pool: &PgPool,
    clerk_org_id: &str,
) -> Vec<(
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
)> {
    sqlx::query_as(
        "select m.state, m.role, m.clerk_role, m.clerk_user_id, m.clerk_invitation_id, m.clerk_membership_id
           from onboard.membership m join onboard.organization o on o.id = m.organization_id
          where o.clerk_org_id = $1 order by m.id",
    )
    .bind(clerk_org_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A fixture with its organization id, user id and ids replaced (`org_…`, `user_…`, `orgmem_…`,
/// `orginv_…` occurrences of the fixtures' values), so tests do not share rows.
fn renamed(name: &str, tag: &str) -> Value {
    let text = serde_json::to_string(&fixture(name)).unwrap();
    let text = text
        .replace("org_2g7np7Hrk0SN6kj5EDMLDaKNL0S", &format!("org_{tag}"))
        .replace("user_2h8op3Isl1QR7tKu5FGNfaLKEoU", &format!("user_{tag}m"))
        .replace("user_2g7np7Hrk0SN6kj5EDMLDaKNL0S", &format!("user_{tag}c"))
        .replace(
            "orgmem_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
            &format!("orgmem_{tag}"),
        )
        .replace(
            "orginv_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
            &format!("orginv_{tag}"),
        );
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn every_fixture_but_organization_created_and_session_created_applies_cleanly() {
    let db = fresh_db().await;
    let dir = format!("{}/fixtures/clerk", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            n.ends_with(".json") && n != "organization.created.json" && n != "session.created.json"
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 11, "{names:?}");
    // Alphabetical order is as good as any: the deletes come before the updates they beat.
    for name in &names {
        let result = deliver(&db.pool, &fixture(name)).await;
        assert!(result.is_ok(), "{name}: {result:?}");
    }
    // Applying every one a second time changes nothing and still succeeds.
    let before = snapshot(&db.pool).await;
    for name in &names {
        deliver(&db.pool, &fixture(name))
            .await
            .unwrap_or_else(|e| panic!("{name} again: {e}"));
    }
    assert_eq!(snapshot(&db.pool).await, before);

    let (name, status, deleted): (Option<String>, String, bool) = sqlx::query_as(
        "select name, onboarding_status, deleted_at is not null from onboard.organization
          where clerk_org_id = 'org_2g7np7Hrk0SN6kj5EDMLDaKNL0S'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (name.as_deref(), status.as_str(), deleted),
        (Some("Acme Corp Updated"), "deleted", true)
    );
    // user.deleted won over the user.updated applied after it.
    let (first_name, deleted): (Option<String>, bool) = sqlx::query_as(
        "select first_name, deleted_at is not null from onboard.app_user where clerk_user_id = 'user_2g7np7Hrk0SN6kj5EDMLDaKNL0S'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((first_name, deleted), (None, true));
    // The member's membership and invitation met on one row, ended with its organization.
    let rows = memberships(&db.pool, "org_2g7np7Hrk0SN6kj5EDMLDaKNL0S").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "ended");
    assert_eq!(
        rows[0].4.as_deref(),
        Some("orginv_2g7np7Hrk0SN6kj5EDMLDaKNL0S")
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from onboard.job where kind = 'offboarding.close_org'"
        )
        .await,
        1
    );
}

/// Every directory row, as text, to compare before and after.
async fn snapshot(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "select t::text from (
            select 'o' k, clerk_org_id, name, slug, clerk_updated_at, deleted_at, onboarding_status from onboard.organization
         ) t
         union all select u::text from (select clerk_user_id, primary_email, first_name, last_name, clerk_updated_at, deleted_at from onboard.app_user) u
         union all select m::text from (select organization_id, clerk_user_id, email, role, clerk_role, state, clerk_membership_id,
                                               clerk_updated_at, clerk_invitation_id, invitation_status, ended_at from onboard.membership) m
         union all select j::text from (select kind, args from onboard.job where kind not like 'clerk.%') j
         order by 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

fn membership_with_role(tag: &str, user: &str, role: &str) -> Value {
    let mut event = renamed("organizationMembership.created.json", tag);
    event["data"]["id"] = json!(format!("orgmem_{tag}{user}"));
    event["data"]["role"] = json!(role);
    event["data"]["public_user_data"]["user_id"] = json!(format!("user_{tag}{user}"));
    event
}

#[tokio::test]
async fn clerk_roles_map_to_crm_roles_and_unknown_ones_to_the_configured_default() {
    let db = fresh_db().await;
    let cases = [
        ("a", "org:admin", "ADMIN"),
        ("b", "org:member", "AGENT"),
        ("c", "org:agent", "AGENT"),
        ("d", "org:viewer", "VIEWER"),
        ("e", "org:billing", "VIEWER"),
    ];
    for (user, role, _) in cases {
        deliver(&db.pool, &membership_with_role("roles", user, role))
            .await
            .unwrap();
    }
    let rows = memberships(&db.pool, "org_roles").await;
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.2.clone(), r.1.clone())).collect();
    let want: Vec<(String, String)> = cases
        .iter()
        .map(|(_, clerk, crm)| (clerk.to_string(), crm.to_string()))
        .collect();
    assert_eq!(got, want);
    assert!(rows.iter().all(|r| r.0 == "active"));

    // A configured mapping: org:billing → ADMIN, anything else unknown → AGENT.
    let roles = RoleMapping::parse("org:billing=ADMIN", Some("AGENT")).unwrap();
    for (user, role) in [("f", "org:billing"), ("g", "org:custom")] {
        let event = membership_with_role("roles2", user, role);
        let id = store(&db.pool, &event).await;
        run(&db.pool, id, "organizationMembership.created", &roles)
            .await
            .unwrap();
    }
    let rows = memberships(&db.pool, "org_roles2").await;
    assert_eq!(
        rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(),
        ["ADMIN", "AGENT"]
    );
}

#[tokio::test]
async fn an_accepted_invitation_and_its_membership_converge_on_one_active_row_in_any_order() {
    let db = fresh_db().await;
    let names = [
        "organizationInvitation.created.json",
        "organizationInvitation.accepted.json",
        "organizationMembership.created.json",
    ];
    // Every order of the three events, each on its own organization.
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for (n, order) in orders.iter().enumerate() {
        let tag = format!("conv{n}");
        let mut states = Vec::new();
        for &i in order {
            deliver(&db.pool, &renamed(names[i], &tag)).await.unwrap();
            states.push(memberships(&db.pool, &format!("org_{tag}")).await);
        }
        let rows = states.last().unwrap();
        assert_eq!(rows.len(), 1, "order {order:?}: {rows:?}");
        let (state, role, clerk_role, user, invitation, membership) = &rows[0];
        assert_eq!(
            (state.as_str(), role.as_str(), clerk_role.as_str()),
            ("active", "AGENT", "org:member"),
            "order {order:?}"
        );
        assert_eq!(user.as_deref(), Some(format!("user_{tag}m").as_str()));
        assert_eq!(
            invitation.as_deref(),
            Some(format!("orginv_{tag}").as_str())
        );
        assert_eq!(
            membership.as_deref(),
            Some(format!("orgmem_{tag}").as_str())
        );
        // Before anything was accepted, the invitation alone is pending.
        if order[0] == 0 {
            assert_eq!(states[0][0].0, "pending");
            assert_eq!(states[0][0].3, None);
        }
    }
    let email: Option<String> = sqlx::query_scalar(
        "select m.email from onboard.membership m join onboard.organization o on o.id = m.organization_id
          where o.clerk_org_id = 'org_conv0'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(email.as_deref(), Some("jane.doe@acme.com"));
}

#[tokio::test]
async fn a_revoked_invitation_is_revoked_and_a_late_created_event_does_not_reopen_it() {
    let db = fresh_db().await;
    deliver(
        &db.pool,
        &renamed("organizationInvitation.created.json", "rev"),
    )
    .await
    .unwrap();
    assert_eq!(memberships(&db.pool, "org_rev").await[0].0, "pending");
    deliver(
        &db.pool,
        &renamed("organizationInvitation.revoked.json", "rev"),
    )
    .await
    .unwrap();
    deliver(
        &db.pool,
        &renamed("organizationInvitation.created.json", "rev"),
    )
    .await
    .unwrap();
    let rows = memberships(&db.pool, "org_rev").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].0.as_str(), rows[0].3.as_deref()),
        ("revoked", None)
    );
    // Clerk sends the invitation email itself: nothing was enqueued for it.
    assert_eq!(count(&db.pool, "select count(*) from onboard.job").await, 0);
}

#[tokio::test]
async fn a_membership_arriving_before_its_organization_and_user_creates_both() {
    let db = fresh_db().await;
    deliver(
        &db.pool,
        &renamed("organizationMembership.created.json", "early"),
    )
    .await
    .unwrap();
    let (name, slug, created_by, clock): (Option<String>, Option<String>, Option<String>, Option<i64>) = sqlx::query_as(
        "select name, slug, created_by, clerk_updated_at from onboard.organization where clerk_org_id = 'org_early'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (
            name.as_deref(),
            slug.as_deref(),
            created_by.as_deref(),
            clock
        ),
        (
            Some("Acme Corp"),
            Some("acme-corp"),
            Some("user_earlyc"),
            Some(1_716_883_200_000)
        )
    );
    let user: (Option<String>, Option<String>, Option<i64>) =
        sqlx::query_as("select first_name, last_name, clerk_updated_at from onboard.app_user where clerk_user_id = 'user_earlym'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(user, (Some("Jane".into()), Some("Doe".into()), None));
    assert_eq!(memberships(&db.pool, "org_early").await[0].0, "active");

    // The saga's first step (organization.created) and the user's own snapshot arrive later.
    deliver(&db.pool, &renamed("organization.created.json", "early"))
        .await
        .unwrap();
    let mut user_created = renamed("user.created.json", "early");
    user_created["data"]["id"] = json!("user_earlym");
    user_created["data"]["first_name"] = json!("Janet");
    deliver(&db.pool, &user_created).await.unwrap();
    let first_name: Option<String> = sqlx::query_scalar(
        "select first_name from onboard.app_user where clerk_user_id = 'user_earlym'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(first_name.as_deref(), Some("Janet"));
    // A later membership event's public data no longer overrides the user's own snapshot.
    deliver(
        &db.pool,
        &renamed("organizationMembership.updated.json", "early"),
    )
    .await
    .unwrap();
    let first_name: Option<String> = sqlx::query_scalar(
        "select first_name from onboard.app_user where clerk_user_id = 'user_earlym'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(first_name.as_deref(), Some("Janet"));
    assert_eq!(memberships(&db.pool, "org_early").await[0].1, "ADMIN");
}

#[tokio::test]
async fn an_older_organization_update_after_a_newer_one_changes_nothing() {
    let db = fresh_db().await;
    deliver(&db.pool, &renamed("organization.updated.json", "old"))
        .await
        .unwrap();
    let before = snapshot(&db.pool).await;
    // Older snapshots of the same organization: organization.created, a membership's nested copy.
    let mut older = renamed("organization.updated.json", "old");
    older["data"]["name"] = json!("Stale Name");
    older["data"]["updated_at"] = json!(1_716_883_400_000_i64);
    let id = store(&db.pool, &older).await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    clerk_event::handle(&mut tx, "clerk.organization.updated", id)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    deliver(&db.pool, &renamed("organization.created.json", "old"))
        .await
        .unwrap();
    deliver(
        &db.pool,
        &renamed("organizationMembership.created.json", "old"),
    )
    .await
    .unwrap();
    let (name, metadata, clock): (Option<String>, Option<Value>, Option<i64>) = sqlx::query_as(
        "select name, public_metadata, clerk_updated_at from onboard.organization where clerk_org_id = 'org_old'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(name.as_deref(), Some("Acme Corp Updated"));
    assert_eq!(metadata, Some(json!({"department": "engineering"})));
    assert_eq!(clock, Some(1_716_883_500_000));
    // Only the new membership rows and the user stub differ from before.
    let after: Vec<String> = snapshot(&db.pool)
        .await
        .into_iter()
        .filter(|r| r.contains("(o,"))
        .collect();
    let before: Vec<String> = before.into_iter().filter(|r| r.contains("(o,")).collect();
    assert_eq!(after, before);
}

#[tokio::test]
async fn equal_updated_at_ties_resolve_the_same_whatever_the_order() {
    let db = fresh_db().await;
    let version = |tag: &str, name: &str| {
        let mut event = renamed("organization.updated.json", tag);
        event["data"]["name"] = json!(name);
        event
    };
    for (tag, first, second) in [("tie1", "Alpha", "Beta"), ("tie2", "Beta", "Alpha")] {
        deliver(&db.pool, &version(tag, first)).await.unwrap();
        deliver(&db.pool, &version(tag, second)).await.unwrap();
    }
    let names: Vec<Option<String>> = sqlx::query_scalar(
        "select name from onboard.organization where clerk_org_id in ('org_tie1', 'org_tie2') order by clerk_org_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(names[0], names[1]);
    // The documented tie-break: the greater content (jsonb order) wins.
    assert_eq!(names[0].as_deref(), Some("Beta"));
}

#[tokio::test]
async fn a_delete_wins_over_older_events_and_is_not_resurrected_by_them() {
    let db = fresh_db().await;
    // User: deleted, then older snapshots arrive.
    deliver(&db.pool, &renamed("user.deleted.json", "del"))
        .await
        .unwrap();
    for name in ["user.created.json", "user.updated.json"] {
        deliver(&db.pool, &renamed(name, "del")).await.unwrap();
    }
    let user: (Option<String>, Option<String>, bool) = sqlx::query_as(
        "select first_name, last_name, deleted_at is not null from onboard.app_user
          where clerk_user_id = 'user_delc'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(user, (None, None, true));

    // Organization: deleted, then an update (fields may converge, the tombstone stays).
    deliver(&db.pool, &renamed("organization.deleted.json", "del"))
        .await
        .unwrap();
    deliver(&db.pool, &renamed("organization.updated.json", "del"))
        .await
        .unwrap();
    let org: (bool, String) = sqlx::query_as(
        "select deleted_at is not null, onboarding_status from onboard.organization where clerk_org_id = 'org_del'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(org, (true, "deleted".to_owned()));
    // Its memberships arriving late are ended at once.
    deliver(
        &db.pool,
        &renamed("organizationMembership.created.json", "del"),
    )
    .await
    .unwrap();
    assert_eq!(memberships(&db.pool, "org_del").await[0].0, "ended");

    // Membership: deleted (its payload keeps an older updated_at than the update), then the
    // update and the creation arrive.
    deliver(
        &db.pool,
        &renamed("organizationMembership.deleted.json", "mdel"),
    )
    .await
    .unwrap();
    deliver(
        &db.pool,
        &renamed("organizationMembership.updated.json", "mdel"),
    )
    .await
    .unwrap();
    deliver(
        &db.pool,
        &renamed("organizationMembership.created.json", "mdel"),
    )
    .await
    .unwrap();
    let rows = memberships(&db.pool, "org_mdel").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].0.as_str(), rows[0].2.as_str()),
        ("ended", "org:member")
    );
    // A new membership of the same user (removed, then added again) is active.
    let mut again = renamed("organizationMembership.created.json", "mdel");
    again["data"]["id"] = json!("orgmem_mdel2");
    again["data"]["created_at"] = json!(1_716_883_900_000_i64);
    again["data"]["updated_at"] = json!(1_716_883_900_000_i64);
    deliver(&db.pool, &again).await.unwrap();
    let rows = memberships(&db.pool, "org_mdel").await;
    assert_eq!(
        (rows.len(), rows[0].0.as_str(), rows[0].5.as_deref()),
        (1, "active", Some("orgmem_mdel2"))
    );
}

#[tokio::test]
async fn user_deleted_purges_the_users_personal_data_from_payloads_and_app_user() {
    let db = fresh_db().await;
    const EMAIL: &str = "janine.privatova@example.net";
    const OTHER_EMAIL: &str = "j.privatova@example.org";
    let user = "user_purge1";
    let mut created = fixture("user.created.json");
    created["data"]["id"] = json!(user);
    created["data"]["first_name"] = json!("Janine");
    created["data"]["last_name"] = json!("Privatova");
    created["data"]["primary_email_address_id"] = json!("idn_purge1");
    created["data"]["email_addresses"] = json!([
        {"object": "email_address", "id": "idn_purge1", "email_address": EMAIL, "verification": {"status": "verified"}},
        {"object": "email_address", "id": "idn_purge2", "email_address": OTHER_EMAIL},
    ]);
    created["data"]["phone_numbers"] = json!([{"id": "idn_phone", "phone_number": "+15550001111"}]);
    created["event_attributes"]["http_request"]["client_ip"] = json!("203.0.113.9");
    deliver(&db.pool, &created).await.unwrap();
    assert_eq!(
        directory::addressee(&mut db.pool.acquire().await.unwrap(), user)
            .await
            .unwrap()
            .map(|a| a.email)
            .as_deref(),
        Some(EMAIL)
    );

    let mut membership = renamed("organizationMembership.created.json", "purge");
    membership["data"]["public_user_data"] = json!({
        "user_id": user, "first_name": "Janine", "last_name": "Privatova",
        "image_url": "https://img.clerk.com/janine", "identifier": EMAIL,
    });
    membership["event_attributes"]["http_request"]["client_ip"] = json!("203.0.113.9");
    deliver(&db.pool, &membership).await.unwrap();
    // A pending invitation to one of their addresses (no user id yet), then its acceptance.
    let mut invited = renamed("organizationInvitation.created.json", "purge");
    invited["data"]["email_address"] = json!(OTHER_EMAIL);
    deliver(&db.pool, &invited).await.unwrap();
    let mut accepted = renamed("organizationInvitation.accepted.json", "purge");
    accepted["data"]["email_address"] = json!(OTHER_EMAIL);
    accepted["data"]["user_id"] = json!(user);
    deliver(&db.pool, &accepted).await.unwrap();
    // A session event (stored, ignored) nests the whole user.
    let mut session = fixture("session.created.json");
    session["data"]["user_id"] = json!(user);
    session["data"]["user"] = created["data"].clone();
    store(&db.pool, &session).await;
    // Someone else's data stays.
    let mut bystander = renamed("organizationMembership.created.json", "purge");
    bystander["data"]["id"] = json!("orgmem_bystander");
    bystander["data"]["public_user_data"]["user_id"] = json!("user_bystander");
    deliver(&db.pool, &bystander).await.unwrap();

    let mentions = |needle: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("select count(*) from onboard.inbox where strpos(lower(payload::text), lower($1)) > 0")
                .bind(needle)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert!(mentions(EMAIL).await >= 3);

    deliver(&db.pool, &json!({"type": "user.deleted", "object": "event", "data": {"object": "user", "id": user, "deleted": true}}))
        .await
        .unwrap();
    // A late update about them is stored by the ingress, then purged when applied.
    let mut late = created.clone();
    late["data"]["updated_at"] = json!(1_716_899_999_000_i64);
    deliver(&db.pool, &late).await.unwrap();

    for needle in [
        EMAIL,
        OTHER_EMAIL,
        "Janine",
        "Privatova",
        "+15550001111",
        "203.0.113.9",
    ] {
        assert_eq!(
            mentions(needle).await,
            0,
            "`{needle}` is still in a stored payload"
        );
    }
    assert_eq!(mentions("Jane").await, 1, "the bystander's data must stay");
    let row: (Option<String>, Option<String>, Option<String>, Option<String>, bool) = sqlx::query_as(
        "select primary_email, first_name, last_name, image_url, deleted_at is not null from onboard.app_user where clerk_user_id = $1",
    )
    .bind(user)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(row, (None, None, None, None, true));
    assert_eq!(
        directory::addressee(&mut db.pool.acquire().await.unwrap(), user)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from onboard.membership where email is not null"
        )
        .await,
        0
    );
    // Their membership is still the membership events' business (and ids are not personal data).
    let rows = memberships(&db.pool, "org_purge").await;
    assert!(
        rows.iter()
            .any(|r| r.3.as_deref() == Some(user) && r.0 == "active"),
        "{rows:?}"
    );
}

#[tokio::test]
async fn organization_deleted_ends_memberships_and_enqueues_one_offboarding_even_when_delivered_twice()
 {
    let db = fresh_db().await;
    deliver(
        &db.pool,
        &renamed("organizationMembership.created.json", "gone"),
    )
    .await
    .unwrap();
    deliver(
        &db.pool,
        &renamed("organizationInvitation.created.json", "gone"),
    )
    .await
    .unwrap();
    let mut other = renamed("organizationInvitation.revoked.json", "gone");
    other["data"]["id"] = json!("orginv_gone2");
    deliver(&db.pool, &other).await.unwrap();
    deliver(
        &db.pool,
        &renamed("organizationMembership.created.json", "stays"),
    )
    .await
    .unwrap();

    let deleted = renamed("organization.deleted.json", "gone");
    let first = deliver(&db.pool, &deleted).await.unwrap();
    // The same job run again (a retry after a lost ack), and a second delivery (another svix-id).
    run(
        &db.pool,
        first,
        "organization.deleted",
        &RoleMapping::default(),
    )
    .await
    .unwrap();
    deliver(&db.pool, &deleted).await.unwrap();
    // Even once the first offboarding job has finished.
    sqlx::query("update onboard.job set state = 'completed', finalized_at = now() where kind = 'offboarding.close_org'")
        .execute(&db.pool)
        .await
        .unwrap();
    deliver(&db.pool, &deleted).await.unwrap();

    let jobs: Vec<(String, Value, Option<String>)> = sqlx::query_as(
        "select queue, args, unique_key from onboard.job where kind = 'offboarding.close_org'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        jobs,
        [(
            "onboarding".to_owned(),
            json!({"clerk_org_id": "org_gone"}),
            Some("offboard:org_gone".to_owned())
        )]
    );
    let states: Vec<(String, bool)> = sqlx::query_as(
        "select m.state, m.ended_at is not null from onboard.membership m
           join onboard.organization o on o.id = m.organization_id where o.clerk_org_id = 'org_gone' order by m.id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        states,
        [
            ("ended".into(), true),
            ("ended".into(), true),
            ("revoked".into(), false)
        ]
    );
    let (status, deleted): (String, bool) = sqlx::query_as(
        "select onboarding_status, deleted_at is not null from onboard.organization where clerk_org_id = 'org_gone'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), deleted), ("deleted", true));
    assert_eq!(memberships(&db.pool, "org_stays").await[0].0, "active");
}

#[tokio::test]
async fn the_saga_upsert_never_touches_saga_columns_and_never_undeletes() {
    let db = fresh_db().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let org = |name: &str, at: i64| OrgUpsert {
        clerk_org_id: "org_saga".into(),
        name: Some(name.into()),
        slug: Some("saga".into()),
        image_url: None,
        created_by: Some("user_creator".into()),
        public_metadata: Some(json!({})),
        updated_at_ms: at,
    };
    directory::upsert_organization(&mut conn, &org("First", 10))
        .await
        .unwrap();
    let id = directory::organization_id(&mut conn, "org_saga")
        .await
        .unwrap()
        .expect("created");
    sqlx::query("update onboard.organization set onboarding_status = 'active', twilio_subaccount_sid = 'AC1' where id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .unwrap();
    directory::upsert_organization(&mut conn, &org("Second", 20))
        .await
        .unwrap();
    directory::upsert_organization(&mut conn, &org("Older", 15))
        .await
        .unwrap();
    let row: (Option<String>, String, Option<String>) = sqlx::query_as(
        "select name, onboarding_status, twilio_subaccount_sid from onboard.organization where id = $1",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        row,
        (Some("Second".into()), "active".into(), Some("AC1".into()))
    );
    assert_eq!(
        directory::organization_id(&mut conn, "org_unknown")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        directory::addressee(&mut conn, "user_unknown")
            .await
            .unwrap(),
        None
    );

    directory::delete_organization(&mut conn, "org_saga")
        .await
        .unwrap();
    directory::upsert_organization(&mut conn, &org("Third", 30))
        .await
        .unwrap();
    let row: (Option<String>, String, bool) = sqlx::query_as(
        "select name, onboarding_status, deleted_at is not null from onboard.organization where id = $1",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(row, (Some("Third".into()), "deleted".into(), true));
}

#[tokio::test]
async fn an_event_that_cannot_be_applied_is_a_permanent_error_with_a_clear_message() {
    let db = fresh_db().await;
    let mut broken = renamed("organizationMembership.created.json", "bad");
    broken["data"]
        .as_object_mut()
        .unwrap()
        .remove("organization");
    let id = store(&db.pool, &broken).await;
    let error = run(
        &db.pool,
        id,
        "organizationMembership.created",
        &RoleMapping::default(),
    )
    .await
    .unwrap_err();
    assert!(error.is_permanent());
    let message = error.to_string();
    assert!(
        message.contains(&format!("inbox row {id}")) && message.contains("organization"),
        "{message}"
    );

    let mut bad_id = renamed("organization.updated.json", "bad");
    bad_id["data"]["id"] = json!("not-an-org");
    let id = store(&db.pool, &bad_id).await;
    let error = run(
        &db.pool,
        id,
        "organization.updated",
        &RoleMapping::default(),
    )
    .await
    .unwrap_err();
    assert!(
        error.is_permanent() && error.to_string().contains("org_"),
        "{error}"
    );

    let error = run(&db.pool, 999_999, "user.created", &RoleMapping::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, EventError::MissingInbox(999_999)),
        "{error}"
    );
    let error = run(&db.pool, id, "user.created", &RoleMapping::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, EventError::KindMismatch { .. }) && error.is_permanent(),
        "{error}"
    );
    let error = run(&db.pool, id, "session.created", &RoleMapping::default())
        .await
        .unwrap_err();
    assert!(matches!(error, EventError::UnknownKind(_)), "{error}");
    // Unknown fields are ignored.
    let mut extra = renamed("organization.updated.json", "extra");
    extra["data"]["brand_new_field"] = json!({"nested": [1, 2, 3]});
    extra["another"] = json!(true);
    deliver(&db.pool, &extra).await.unwrap();
}

async fn visible(conn: &mut PgConnection) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("select organization_id from onboard.membership order by id")
        .fetch_all(conn)
        .await
}

#[tokio::test]
async fn a_tenant_role_sees_only_the_memberships_of_its_current_organization() {
    let db = fresh_db().await;
    for tag in ["tenanta", "tenantb"] {
        deliver(
            &db.pool,
            &renamed("organizationMembership.created.json", tag),
        )
        .await
        .unwrap();
        deliver(
            &db.pool,
            &renamed("organizationInvitation.created.json", tag),
        )
        .await
        .unwrap();
    }
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    // Roles are cluster-wide: create it once per cluster.
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        "do $$ begin create role tenant_reader; exception when duplicate_object then null; end $$;
         grant usage on schema onboard to tenant_reader;
         grant select on onboard.membership to tenant_reader;"
            .to_owned(),
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let a: i64 = sqlx::query_scalar(
        "select id from onboard.organization where clerk_org_id = 'org_tenanta'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    sqlx::query("set role tenant_reader")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        visible(&mut conn).await.unwrap(),
        Vec::<i64>::new(),
        "no organization set: nothing"
    );
    for setting in ["org_tenanta".to_owned(), a.to_string()] {
        sqlx::query("select set_config('app.current_organization', $1, false)")
            .bind(&setting)
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(visible(&mut conn).await.unwrap(), [a, a], "as {setting}");
    }
    sqlx::query("select set_config('app.current_organization', 'org_unknown', false)")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(visible(&mut conn).await.unwrap().is_empty());
    sqlx::query("reset role").execute(&mut conn).await.unwrap();
    // The service's own role (here the owner) is not subject to the policy.
    assert_eq!(
        count(&db.pool, "select count(*) from onboard.membership").await,
        4
    );
}

#[tokio::test]
async fn the_clerk_queue_applies_each_event_and_completes_its_job_in_one_transaction() {
    let db = fresh_db().await;
    let event = renamed("organizationMembership.created.json", "worker");
    let inbox_id = store(&db.pool, &event).await;
    let job: i64 = sqlx::query_scalar(
        "insert into onboard.job (kind, queue, args) values ('clerk.organizationMembership.created', 'clerk', $1) returning id",
    )
    .bind(Json(json!({"inbox_id": inbox_id, "svix_id": "msg_worker"})))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let missing: i64 = sqlx::query_scalar(
        "insert into onboard.job (kind, queue, args) values ('clerk.user.created', 'clerk', $1) returning id",
    )
    .bind(Json(json!({"inbox_id": 987_654, "svix_id": "msg_missing"})))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let registry =
        worker::handlers::clerk::register(worker::runtime::Registry::default(), db.pool.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker::runtime::run(
        db.pool.clone(),
        registry,
        worker::runtime::WorkerSettings::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    for (id, want) in [(job, "completed"), (missing, "discarded")] {
        let pool = db.pool.clone();
        wait_for(&format!("job {id} {want}"), Duration::from_secs(20), || {
            let pool = pool.clone();
            async move { (integration_tests::job_state(&pool, id).await == want).then_some(()) }
        })
        .await;
    }
    assert_eq!(memberships(&db.pool, "org_worker").await[0].0, "active");
    let errors: String = sqlx::query_scalar("select errors::text from onboard.job where id = $1")
        .bind(missing)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        errors.contains("inbox row 987654 does not exist"),
        "{errors}"
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), running).await;
}

// ---------------------------------------------------------------------------------------------
// Out of order, duplicated: a proptest against an independent model.
// ---------------------------------------------------------------------------------------------

const ORGS: u8 = 2;
const USERS: u8 = 3;
const ROLES: [&str; 5] = [
    "org:admin",
    "org:member",
    "org:agent",
    "org:viewer",
    "org:billing",
];

/// One event of a generated stream. Times are small so that ties happen.
#[derive(Debug, Clone)]
enum Spec {
    /// organization.created (`created`) or .updated, snapshot at `t`.
    Org {
        o: u8,
        t: i64,
        created: bool,
    },
    OrgDeleted {
        o: u8,
    },
    /// user.created (`created`) or .updated, snapshot at `t`.
    User {
        u: u8,
        t: i64,
        created: bool,
    },
    UserDeleted {
        u: u8,
    },
    /// organizationMembership.<action> of membership instance `inst` (0, or 1 = removed and
    /// added again, a newer membership); its nested organization is the snapshot at `org_t`.
    Membership {
        o: u8,
        u: u8,
        inst: u8,
        action: u8,
        dt: i64,
        role: usize,
        org_t: i64,
    },
    /// organizationInvitation.<status> (0 created, 1 accepted, 2 revoked) of (o, u)'s invitation.
    Invitation {
        o: u8,
        u: u8,
        status: u8,
        t: i64,
    },
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        2 => (0..ORGS, 1..=8i64, any::<bool>()).prop_map(|(o, t, created)| Spec::Org { o, t, created }),
        1 => (0..ORGS).prop_map(|o| Spec::OrgDeleted { o }),
        2 => (0..USERS, 1..=8i64, any::<bool>()).prop_map(|(u, t, created)| Spec::User { u, t, created }),
        1 => (0..USERS).prop_map(|u| Spec::UserDeleted { u }),
        3 => (0..ORGS, 0..USERS, 0..2u8, 0..3u8, 0..=4i64, 0..ROLES.len(), 1..=8i64).prop_map(
            |(o, u, inst, action, dt, role, org_t)| Spec::Membership { o, u, inst, action, dt, role, org_t }
        ),
        2 => (0..ORGS, 0..USERS, 0..3u8, 1..=8i64).prop_map(|(o, u, status, t)| Spec::Invitation { o, u, status, t }),
    ]
}

/// A stream: events, some delivered twice, shuffled.
fn stream() -> impl Strategy<Value = Vec<Spec>> {
    prop::collection::vec((spec(), any::<bool>()), 1..28)
        .prop_map(|events| {
            events
                .into_iter()
                .flat_map(|(s, twice)| if twice { vec![s.clone(), s] } else { vec![s] })
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

/// Ids and payloads of one case (every id carries the case number: cases share a database).
struct World {
    case: u64,
}

impl World {
    fn org(&self, o: u8) -> String {
        format!("org_c{}o{o}", self.case)
    }
    fn user(&self, u: u8) -> String {
        format!("user_c{}u{u}", self.case)
    }
    fn email(&self, u: u8, t: i64) -> String {
        format!("c{}u{u}v{t}@example.com", self.case)
    }
    fn public_name(&self, u: u8) -> String {
        format!("Pc{}u{u}", self.case)
    }
    fn invitation(&self, o: u8, u: u8) -> String {
        format!("orginv_c{}o{o}u{u}", self.case)
    }
    fn invite_email(&self, u: u8) -> String {
        format!("inv-c{}u{u}@example.com", self.case)
    }
    fn membership(&self, o: u8, u: u8, inst: u8) -> String {
        format!("orgmem_c{}o{o}u{u}i{inst}", self.case)
    }
    fn invitation_role(o: u8, u: u8) -> &'static str {
        ROLES[usize::from(o + u) % ROLES.len()]
    }
    fn membership_created_at(inst: u8) -> i64 {
        10 + 10 * i64::from(inst)
    }

    /// The organization's snapshot at `t` (content is a function of `t`, so equal clocks mean
    /// equal content here; content tie-breaks have their own test).
    fn org_snapshot(&self, o: u8, t: i64) -> OrgRow {
        OrgRow {
            name: Some(format!("Org {o} v{t}")),
            slug: Some(format!("org-{o}-v{t}")),
            image_url: Some(format!("https://img.example/{o}/{t}")),
            created_by: Some(format!("user_c{}creator", self.case)),
            public_metadata: Some(json!({"v": t})),
            clock: Some(t),
            deleted: false,
            status: "pending".into(),
        }
    }

    fn org_data(&self, o: u8, t: i64) -> Value {
        let s = self.org_snapshot(o, t);
        json!({
            "object": "organization", "id": self.org(o), "name": s.name, "slug": s.slug,
            "image_url": s.image_url, "has_image": true, "members_count": 1,
            "public_metadata": s.public_metadata, "private_metadata": {"secret": t},
            "created_by": s.created_by, "created_at": 1, "updated_at": t,
        })
    }

    fn user_snapshot(&self, u: u8, t: i64) -> UserRow {
        UserRow {
            primary_email: Some(self.email(u, t)),
            first_name: Some(format!("Fc{}u{u}v{t}", self.case)),
            last_name: Some(format!("Lc{}u{u}v{t}", self.case)),
            username: Some(format!("u{u}v{t}")),
            image_url: Some(format!("https://img.example/u{u}/{t}")),
            clock: Some(t),
            deleted: false,
        }
    }

    fn payload(&self, spec: &Spec) -> Value {
        match *spec {
            Spec::Org { o, t, created } => envelope(
                if created {
                    "organization.created"
                } else {
                    "organization.updated"
                },
                self.org_data(o, t),
            ),
            Spec::OrgDeleted { o } => envelope(
                "organization.deleted",
                json!({"object": "organization", "id": self.org(o), "slug": format!("org-{o}"), "deleted": true}),
            ),
            Spec::User { u, t, created } => {
                let s = self.user_snapshot(u, t);
                envelope(
                    if created {
                        "user.created"
                    } else {
                        "user.updated"
                    },
                    json!({
                        "object": "user", "id": self.user(u), "primary_email_address_id": format!("idn_{u}_{t}"),
                        "email_addresses": [
                            {"id": format!("idn_x{u}_{t}"), "email_address": format!("alt-{}", self.email(u, t))},
                            {"id": format!("idn_{u}_{t}"), "email_address": s.primary_email},
                        ],
                        "phone_numbers": [], "first_name": s.first_name, "last_name": s.last_name,
                        "username": s.username, "image_url": s.image_url, "created_at": 1, "updated_at": t,
                    }),
                )
            }
            Spec::UserDeleted { u } => envelope(
                "user.deleted",
                json!({"object": "user", "id": self.user(u), "deleted": true}),
            ),
            Spec::Membership {
                o,
                u,
                inst,
                action,
                dt,
                role,
                org_t,
            } => {
                let created_at = Self::membership_created_at(inst);
                let (event_type, updated_at) = match action {
                    0 => ("organizationMembership.created", created_at),
                    1 => ("organizationMembership.updated", created_at + dt),
                    _ => ("organizationMembership.deleted", created_at + dt),
                };
                envelope(
                    event_type,
                    json!({
                        "object": "organization_membership", "id": self.membership(o, u, inst),
                        "role": ROLES[role], "permissions": [], "organization": self.org_data(o, org_t),
                        "public_user_data": {
                            "user_id": self.user(u), "first_name": self.public_name(u), "last_name": "Lic",
                            "image_url": format!("https://img.example/pub/{u}"), "has_image": true,
                            "identifier": format!("ident-{}", self.email(u, 0)),
                        },
                        "created_at": created_at, "updated_at": updated_at,
                    }),
                )
            }
            Spec::Invitation { o, u, status, t } => {
                let (event_type, status_text) = match status {
                    0 => ("organizationInvitation.created", "pending"),
                    1 => ("organizationInvitation.accepted", "accepted"),
                    _ => ("organizationInvitation.revoked", "revoked"),
                };
                let mut data = json!({
                    "object": "organization_invitation", "id": self.invitation(o, u),
                    "email_address": self.invite_email(u), "role": Self::invitation_role(o, u),
                    "organization_id": self.org(o), "status": status_text, "created_at": 1, "updated_at": t,
                });
                if status == 1 {
                    data["user_id"] = json!(self.user(u));
                }
                envelope(event_type, data)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct OrgRow {
    name: Option<String>,
    slug: Option<String>,
    image_url: Option<String>,
    created_by: Option<String>,
    public_metadata: Option<Value>,
    clock: Option<i64>,
    deleted: bool,
    status: String,
}

#[derive(Debug, Clone, PartialEq)]
struct UserRow {
    primary_email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    username: Option<String>,
    image_url: Option<String>,
    clock: Option<i64>,
    deleted: bool,
}

/// (org, user, invitation id) → (membership id, state, role, clerk role, email, ended_at set).
type MemberKey = (String, Option<String>, Option<String>);
type MemberRow = (Option<String>, String, String, String, Option<String>, bool);

#[derive(Debug, PartialEq)]
struct Tables {
    orgs: BTreeMap<String, OrgRow>,
    users: BTreeMap<String, UserRow>,
    members: BTreeMap<MemberKey, MemberRow>,
    offboardings: BTreeSet<String>,
}

/// The expected final tables, from the rules alone (never from the code's own run):
/// - per entity the snapshot with the newest `updated_at` wins; deletes of users and
///   organizations are final (their payloads carry no clock; Clerk never reuses ids);
/// - a user's tombstone has no personal data; an organization's keeps converging fields;
/// - a membership's events order by (created_at, id, deleted, updated_at, role): a newer
///   membership supersedes, a delete ends its own membership for good, ties go to the greater
///   role text; an invitation's by (final, updated_at, status, …);
/// - an accepted invitation lives on its (org, user) row; the row's state follows the
///   membership part, else the invitation; pending/active rows of a deleted org are ended.
fn model(world: &World, events: &[Spec]) -> Tables {
    let roles = RoleMapping::default();
    let mut orgs = BTreeMap::new();
    let mut users = BTreeMap::new();
    for o in 0..ORGS {
        let mentioned = events.iter().any(|e| match *e {
            Spec::Org { o: x, .. } | Spec::OrgDeleted { o: x } => x == o,
            Spec::Membership { o: x, .. } | Spec::Invitation { o: x, .. } => x == o,
            _ => false,
        });
        if !mentioned {
            continue;
        }
        let newest = events
            .iter()
            .filter_map(|e| match *e {
                Spec::Org { o: x, t, .. } if x == o => Some(t),
                Spec::Membership { o: x, org_t, .. } if x == o => Some(org_t),
                _ => None,
            })
            .max();
        let mut row = match newest {
            Some(t) => world.org_snapshot(o, t),
            None => OrgRow {
                name: None,
                slug: None,
                image_url: None,
                created_by: None,
                public_metadata: None,
                clock: None,
                deleted: false,
                status: "pending".into(),
            },
        };
        if events
            .iter()
            .any(|e| matches!(*e, Spec::OrgDeleted { o: x } if x == o))
        {
            row.deleted = true;
            row.status = "deleted".into();
        }
        orgs.insert(world.org(o), row);
    }
    let user_deleted = |u: u8| {
        events
            .iter()
            .any(|e| matches!(*e, Spec::UserDeleted { u: x } if x == u))
    };
    // An address a user accepted an invitation at is theirs, in every organization.
    let invite_email_erased = |u: u8| {
        user_deleted(u)
            && events
                .iter()
                .any(|e| matches!(*e, Spec::Invitation { u: x, status: 1, .. } if x == u))
    };
    for u in 0..USERS {
        let mentioned = events.iter().any(|e| match *e {
            Spec::User { u: x, .. }
            | Spec::UserDeleted { u: x }
            | Spec::Membership { u: x, .. } => x == u,
            _ => false,
        });
        if !mentioned {
            continue;
        }
        let newest = events
            .iter()
            .filter_map(|e| match *e {
                Spec::User { u: x, t, .. } if x == u => Some(t),
                _ => None,
            })
            .max();
        let row = if user_deleted(u) {
            UserRow {
                primary_email: None,
                first_name: None,
                last_name: None,
                username: None,
                image_url: None,
                clock: None,
                deleted: true,
            }
        } else if let Some(t) = newest {
            world.user_snapshot(u, t)
        } else {
            UserRow {
                primary_email: None,
                first_name: Some(world.public_name(u)),
                last_name: Some("Lic".into()),
                username: None,
                image_url: Some(format!("https://img.example/pub/{u}")),
                clock: None,
                deleted: false,
            }
        };
        users.insert(world.user(u), row);
    }
    // The tombstone's clock: keep whatever the row had (not compared for deleted users).
    let mut members = BTreeMap::new();
    for o in 0..ORGS {
        let org_deleted = orgs.get(&world.org(o)).is_some_and(|r| r.deleted);
        for u in 0..USERS {
            // Membership part: the max of (created_at, id, deleted, updated_at, role).
            let membership = events
                .iter()
                .filter_map(|e| match *e {
                    Spec::Membership {
                        o: x,
                        u: y,
                        inst,
                        action,
                        dt,
                        role,
                        ..
                    } if (x, y) == (o, u) => {
                        let created_at = World::membership_created_at(inst);
                        let updated_at = if action == 0 {
                            created_at
                        } else {
                            created_at + dt
                        };
                        Some((
                            created_at,
                            world.membership(o, u, inst),
                            action == 2,
                            updated_at,
                            ROLES[role],
                        ))
                    }
                    _ => None,
                })
                .max();
            // Invitation part: the max of (final, updated_at, status).
            let invitation = events
                .iter()
                .filter_map(|e| match *e {
                    Spec::Invitation {
                        o: x,
                        u: y,
                        status,
                        t,
                    } if (x, y) == (o, u) => Some((status != 0, t, status)),
                    _ => None,
                })
                .max();
            let accepted = events.iter().any(|e| matches!(*e, Spec::Invitation { o: x, u: y, status: 1, .. } if (x, y) == (o, u)));
            let derive = |state: &str, clerk_role: &str| {
                let state = if org_deleted && (state == "pending" || state == "active") {
                    "ended"
                } else {
                    state
                };
                (
                    state.to_owned(),
                    roles.map(clerk_role).as_str().to_owned(),
                    clerk_role.to_owned(),
                )
            };
            let invitation_state = |status: u8| match status {
                0 => "pending",
                1 => "active",
                _ => "revoked",
            };
            if membership.is_some() || accepted {
                let linked = if accepted { invitation } else { None };
                let (state, role, clerk_role) = match (&membership, linked) {
                    (Some(m), _) => derive(if m.2 { "ended" } else { "active" }, m.4),
                    (None, Some((_, _, status))) => {
                        derive(invitation_state(status), World::invitation_role(o, u))
                    }
                    (None, None) => unreachable!(),
                };
                let email = match linked {
                    Some(_) if !user_deleted(u) => Some(world.invite_email(u)),
                    _ => None,
                };
                let ended = state == "ended";
                members.insert(
                    (
                        world.org(o),
                        Some(world.user(u)),
                        linked.map(|_| world.invitation(o, u)),
                    ),
                    (
                        membership.as_ref().map(|m| m.1.clone()),
                        state,
                        role,
                        clerk_role,
                        email,
                        ended,
                    ),
                );
            }
            if let (Some((_, _, status)), false) = (invitation, accepted) {
                let (state, role, clerk_role) =
                    derive(invitation_state(status), World::invitation_role(o, u));
                let ended = state == "ended";
                members.insert(
                    (world.org(o), None, Some(world.invitation(o, u))),
                    (
                        None,
                        state,
                        role,
                        clerk_role,
                        (!invite_email_erased(u)).then(|| world.invite_email(u)),
                        ended,
                    ),
                );
            }
        }
    }
    let offboardings = orgs
        .iter()
        .filter(|(_, r)| r.deleted)
        .map(|(id, _)| id.clone())
        .collect();
    Tables {
        orgs,
        users,
        members,
        offboardings,
    }
}

async fn read_tables(pool: &PgPool, world: &World) -> Tables {
    let org_prefix = format!("org_c{}o%", world.case);
    let user_prefix = format!("user_c{}u%", world.case);
    #[allow(clippy::type_complexity)]
    let orgs: Vec<(
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<Value>,
        Option<i64>,
        bool,
        String,
    )> = sqlx::query_as(
        "select clerk_org_id, name, slug, image_url, created_by, public_metadata, clerk_updated_at,
                    deleted_at is not null, onboarding_status
               from onboard.organization where clerk_org_id like $1",
    )
    .bind(&org_prefix)
    .fetch_all(pool)
    .await
    .unwrap();
    #[allow(clippy::type_complexity)]
    let users: Vec<(String, Option<String>, Option<String>, Option<String>, Option<String>, Option<String>, Option<i64>, bool)> =
        sqlx::query_as(
            "select clerk_user_id, primary_email, first_name, last_name, username, image_url, clerk_updated_at,
                    deleted_at is not null
               from onboard.app_user where clerk_user_id like $1",
        )
        .bind(&user_prefix)
        .fetch_all(pool)
        .await
        .unwrap();
    #[allow(clippy::type_complexity)]
    let members: Vec<(String, Option<String>, Option<String>, Option<String>, String, String, String, Option<String>, bool)> =
        sqlx::query_as(
            "select o.clerk_org_id, m.clerk_user_id, m.clerk_invitation_id, m.clerk_membership_id, m.state, m.role,
                    m.clerk_role, m.email, m.ended_at is not null
               from onboard.membership m join onboard.organization o on o.id = m.organization_id
              where o.clerk_org_id like $1",
        )
        .bind(&org_prefix)
        .fetch_all(pool)
        .await
        .unwrap();
    let offboardings: Vec<String> = sqlx::query_scalar(
        "select args ->> 'clerk_org_id' from onboard.job where kind = 'offboarding.close_org' and args ->> 'clerk_org_id' like $1",
    )
    .bind(&org_prefix)
    .fetch_all(pool)
    .await
    .unwrap();
    let offboarding_count = offboardings.len();
    let offboardings: BTreeSet<String> = offboardings.into_iter().collect();
    assert_eq!(
        offboarding_count,
        offboardings.len(),
        "one offboarding per organization"
    );
    let member_count = members.len();
    let tables = Tables {
        orgs: orgs
            .into_iter()
            .map(
                |(
                    id,
                    name,
                    slug,
                    image_url,
                    created_by,
                    public_metadata,
                    clock,
                    deleted,
                    status,
                )| {
                    (
                        id,
                        OrgRow {
                            name,
                            slug,
                            image_url,
                            created_by,
                            public_metadata,
                            clock,
                            deleted,
                            status,
                        },
                    )
                },
            )
            .collect(),
        users: users
            .into_iter()
            .map(
                |(
                    id,
                    primary_email,
                    first_name,
                    last_name,
                    username,
                    image_url,
                    clock,
                    deleted,
                )| {
                    // A tombstone's clock is whatever it was: not part of the contract.
                    let clock = if deleted { None } else { clock };
                    (
                        id,
                        UserRow {
                            primary_email,
                            first_name,
                            last_name,
                            username,
                            image_url,
                            clock,
                            deleted,
                        },
                    )
                },
            )
            .collect(),
        members: members
            .into_iter()
            .map(
                |(org, user, invitation, membership, state, role, clerk_role, email, ended)| {
                    (
                        (org, user, invitation),
                        (membership, state, role, clerk_role, email, ended),
                    )
                },
            )
            .collect(),
        offboardings,
    };
    assert_eq!(
        tables.members.len(),
        member_count,
        "one row per (org, user) and per invitation"
    );
    tables
}

/// What a deleted user must no longer have anywhere in the inbox.
fn forbidden_strings(world: &World, events: &[Spec]) -> Vec<String> {
    let mut strings = Vec::new();
    for u in 0..USERS {
        if !events
            .iter()
            .any(|e| matches!(*e, Spec::UserDeleted { u: x } if x == u))
        {
            continue;
        }
        strings.push(format!("c{}u{u}v", world.case)); // every address of theirs
        strings.push(world.public_name(u));
        strings.push(format!("Fc{}u{u}v", world.case)); // first names of their snapshots
        let accepted = events
            .iter()
            .any(|e| matches!(*e, Spec::Invitation { u: x, status: 1, .. } if x == u));
        if accepted {
            // Only an invitation they accepted is theirs for sure (same address everywhere).
            strings.push(world.invite_email(u));
        }
    }
    strings
}

#[test]
fn shuffled_duplicated_event_streams_end_in_the_state_an_independent_model_predicts() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = runtime.block_on(fresh_db());
    let cases = AtomicU64::new(0);
    // 24 cases by default (seconds); PROPTEST_CASES=1000 for a longer hunt.
    let cases_wanted = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let config = ProptestConfig {
        cases: cases_wanted,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(&stream(), |events| {
            let world = World {
                case: cases.fetch_add(1, Ordering::SeqCst),
            };
            runtime.block_on(async {
                for spec in &events {
                    let payload = world.payload(spec);
                    deliver(&db.pool, &payload)
                        .await
                        .unwrap_or_else(|e| panic!("{spec:?}: {e}"));
                }
                let got = read_tables(&db.pool, &world).await;
                let want = model(&world, &events);
                prop_assert_eq!(&got.orgs, &want.orgs, "organizations");
                prop_assert_eq!(&got.users, &want.users, "users");
                prop_assert_eq!(&got.members, &want.members, "memberships");
                prop_assert_eq!(&got.offboardings, &want.offboardings, "offboardings");
                let patterns: Vec<String> = forbidden_strings(&world, &events);
                for needle in patterns {
                    let hits: i64 = sqlx::query_scalar(
                        "select count(*) from onboard.inbox where strpos(payload::text, $1) > 0",
                    )
                    .bind(&needle)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
                    prop_assert_eq!(hits, 0, "`{}` of a deleted user is still stored", needle);
                }
                Ok(())
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
