//! Nothing personal stays after `user.deleted` (issue 9 §12): the whole stack (ingress, worker,
//! sandbox) receives every kind of event that names one user, runs the sagas they started, then
//! their deletion; a generic search of every text, jsonb and bytea column of every table in
//! schema `onboard` then finds none of their addresses, names, phone number, IP or user agent.

use std::time::Duration;

use integration_tests::stack::fixture;
use integration_tests::stack::{SECRET, Stack, StackOptions};
use integration_tests::wait_for;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sqlx::PgPool;

/// Every (table.column, rows) in schema `onboard` whose text, jsonb, jsonb[] or bytea value
/// contains `needle` (case-insensitive).
pub async fn columns_mentioning(pool: &PgPool, needle: &str) -> Vec<(String, i64)> {
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "select table_name::text, column_name::text, data_type::text from information_schema.columns
          where table_schema = 'onboard'
            and (data_type in ('text', 'jsonb', 'json', 'bytea', 'character varying')
                 or (data_type = 'ARRAY' and udt_name in ('_text', '_jsonb', '_varchar')))
            and table_name in (select table_name from information_schema.tables
                                where table_schema = 'onboard' and table_type = 'BASE TABLE')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        columns.len() > 20,
        "the catalog query found too few columns: {columns:?}"
    );
    let mut hits = Vec::new();
    for (table, column, data_type) in columns {
        let value = if data_type == "bytea" {
            format!("encode(\"{column}\", 'escape')")
        } else {
            format!("\"{column}\"::text")
        };
        let sql = format!(
            "select count(*) from onboard.\"{table}\" where strpos(lower({value}), lower($1)) > 0"
        );
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(needle)
            .fetch_one(pool)
            .await
            .unwrap();
        if count > 0 {
            hits.push((format!("{table}.{column}"), count));
        }
    }
    hits
}

const USER: &str = "user_2zebPrivacyPurge";
const EMAIL: &str = "Zebulon.Quackenbush@example.net";
const OTHER_EMAIL: &str = "zq-invites@example.org";
const API_EMAIL: &str = "zeb.api@example.com";
const FIRST: &str = "Zebulon";
const LAST: &str = "Quackenbush";
const USERNAME: &str = "zquackenbush";
const PHONE: &str = "+15557654321";
const IP: &str = "198.51.100.77";
/// An address of theirs the sandbox refuses, echoing it in its error (`fail@…`).
const REFUSED_EMAIL: &str = "fail@zeb-privacy.example";
const AGENT: &str = "ZebBrowser/9.9 (privacy test)";
const ORG: &str = "org_2zebPrivacyOrg";

/// `event`'s request metadata set to the user's IP and user agent.
fn acted(mut event: Value) -> Value {
    event["event_attributes"]["http_request"] = json!({"client_ip": IP, "user_agent": AGENT});
    event
}

fn user_data(mut data: Value) -> Value {
    data["id"] = json!(USER);
    data["first_name"] = json!(FIRST);
    data["last_name"] = json!(LAST);
    data["username"] = json!(USERNAME);
    data["primary_email_address_id"] = json!("idn_zeb1");
    data["primary_phone_number_id"] = json!("idn_zebphone");
    data["email_addresses"] = json!([
        {"object": "email_address", "id": "idn_zeb1", "email_address": EMAIL,
         "verification": {"status": "verified", "strategy": "email_code"}, "linked_to": []},
        {"object": "email_address", "id": "idn_zeb2", "email_address": OTHER_EMAIL, "linked_to": []},
    ]);
    data["phone_numbers"] =
        json!([{"object": "phone_number", "id": "idn_zebphone", "phone_number": PHONE}]);
    data
}

fn membership(name: &str, user: &str, first: &str, last: &str, identifier: &str) -> Value {
    let mut event = acted(fixture(name));
    event["data"]["organization"]["id"] = json!(ORG);
    event["data"]["id"] = json!(format!("orgmem_{user}"));
    event["data"]["public_user_data"]["user_id"] = json!(user);
    event["data"]["public_user_data"]["first_name"] = json!(first);
    event["data"]["public_user_data"]["last_name"] = json!(last);
    event["data"]["public_user_data"]["identifier"] = json!(identifier);
    event
}

fn invitation(name: &str) -> Value {
    let mut event = acted(fixture(name));
    event["data"]["organization_id"] = json!(ORG);
    event["data"]["email_address"] = json!(OTHER_EMAIL);
    event
}

/// Clerk's `email.created` (no fixture ships with it): the message Clerk sends the user.
fn email_created() -> Value {
    acted(json!({
        "object": "event", "type": "email.created", "instance_id": "ins_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
        "timestamp": 1_716_883_200,
        "data": {
            "object": "email", "id": "ema_2zebPrivacy", "slug": "verification_code",
            "user_id": USER, "email_address_id": "idn_zeb1", "to_email_address": EMAIL,
            "from_email_address": "notifications@accounts.dev",
            "subject": "123456 is your verification code",
            "body": format!("<p>Hi {FIRST} {LAST}, your code is 123456</p>"),
            "body_plain": format!("Hi {FIRST}, your code is 123456"),
            "status": "queued", "delivered_by_clerk": false,
            "data": {"otp_code": "123456", "user": {"first_name": FIRST, "email": EMAIL}}
        }
    }))
}

/// Clerk's `sms.created`.
fn sms_created() -> Value {
    acted(json!({
        "object": "event", "type": "sms.created", "instance_id": "ins_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
        "timestamp": 1_716_883_200,
        "data": {
            "object": "sms_message", "id": "sms_2zebPrivacy", "slug": "verification_code",
            "user_id": USER, "phone_number_id": "idn_zebphone", "to_phone_number": PHONE,
            "from_phone_number": "+15555550100",
            "message": format!("{FIRST}, 123456 is your verification code"),
            "status": "queued", "delivered_by_clerk": false, "data": {"otp_code": "123456"}
        }
    }))
}

async fn post_onboarding(stack: &Stack, key: &str, body: &Value, idempotency_key: &str) -> u16 {
    reqwest::Client::new()
        .post(format!(
            "http://{}/v1/onboarding",
            stack.ingress.ingress_addr
        ))
        .bearer_auth(key)
        .header("idempotency-key", idempotency_key)
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn user_deleted_leaves_none_of_the_users_personal_data_anywhere_in_the_database() {
    let stack = Stack::start(StackOptions::default()).await;
    let pool = stack.db.pool.clone();
    let webhook = format!("http://{}/webhooks/clerk", stack.ingress.ingress_addr);

    // The user first, so the saga's welcome email finds their address in the directory.
    let mut created = acted(fixture("user.created.json"));
    created["data"] = user_data(created["data"].clone());
    stack.deliver(&created).await;
    stack.wait_idle().await;

    let mut updated = acted(fixture("user.updated.json"));
    updated["data"] = user_data(updated["data"].clone());
    let mut session = acted(fixture("session.created.json"));
    session["data"]["user_id"] = json!(USER);
    session["data"]["user"] = user_data(session["data"]["user"].clone());
    session["data"]["latest_activity"]["ip_address"] = json!(IP);
    let mut org_created = acted(fixture("organization.created.json"));
    org_created["data"]["id"] = json!(ORG);
    org_created["data"]["slug"] = json!("zeb-org");
    org_created["data"]["created_by"] = json!(USER);
    let mut org_updated = acted(fixture("organization.updated.json"));
    org_updated["data"]["id"] = json!(ORG);
    org_updated["data"]["created_by"] = json!(USER);
    let mut org_deleted = acted(fixture("organization.deleted.json"));
    org_deleted["data"]["id"] = json!("org_2zebOtherGone");
    let mut accepted = invitation("organizationInvitation.accepted.json");
    accepted["data"]["user_id"] = json!(USER);
    let mut unknown = acted(json!({
        "object": "event", "type": "waitlistEntry.created", "timestamp": 1_716_883_200,
        "data": {"object": "waitlist_entry", "id": "wle_zeb", "email_address": EMAIL}
    }));
    unknown["event_attributes"]["http_request"]["client_ip"] = json!("203.0.113.200");
    let events = [
        updated,
        session,
        org_created,
        org_updated,
        membership(
            "organizationMembership.created.json",
            USER,
            FIRST,
            LAST,
            EMAIL,
        ),
        membership(
            "organizationMembership.updated.json",
            USER,
            FIRST,
            LAST,
            EMAIL,
        ),
        invitation("organizationInvitation.created.json"),
        accepted,
        invitation("organizationInvitation.revoked.json"),
        email_created(),
        sms_created(),
        unknown,
        org_deleted,
        // Someone else's data, which must stay.
        membership(
            "organizationMembership.created.json",
            "user_2bystander",
            "Bystanderina",
            "Keepme",
            "bystander@example.com",
        ),
    ];
    for event in &events {
        stack.deliver(event).await;
    }
    stack
        .deliver(&membership(
            "organizationMembership.deleted.json",
            USER,
            FIRST,
            LAST,
            EMAIL,
        ))
        .await;
    // A signed body that is not a Clerk envelope, naming them.
    let rejected = format!(r#"{{"type":"user.updated","data":"{EMAIL} {FIRST} {PHONE}"}}"#);
    let (status, _) = ingress::send::send_event(&webhook, SECRET, rejected.as_bytes(), None, None)
        .await
        .unwrap();
    assert_eq!(status, 400);
    // An onboarding the API started for an organization they created, with their address.
    let (_, key) = onboarding::api_key::create(&pool, "privacy").await.unwrap();
    let api_body = json!({
        "org_id": "org_2zebPrivacyApi", "name": "Zeb API Org", "slug": "zeb-api",
        "creator_user_id": USER, "creator_email": API_EMAIL, "creator_first_name": FIRST,
    });
    assert_eq!(
        post_onboarding(&stack, key.expose_secret(), &api_body, "privacy-test-1").await,
        202
    );
    // One whose welcome email the provider refuses with an error naming the address: the
    // job's error history holds it.
    let refused_body = json!({
        "org_id": "org_2zebPrivacyRefused", "name": "Zeb Refused Org", "slug": "zeb-refused",
        "creator_user_id": USER, "creator_email": REFUSED_EMAIL, "creator_first_name": FIRST,
    });
    assert_eq!(
        post_onboarding(&stack, key.expose_secret(), &refused_body, "privacy-test-2").await,
        202
    );
    // A malformed event about them, refused with an error that quotes their address.
    let mut malformed = fixture("user.updated.json");
    malformed["data"] = user_data(malformed["data"].clone());
    malformed["data"]["updated_at"] = json!(EMAIL);
    stack.deliver(&malformed).await;
    // A job whose arguments carry their address and phone number (a kind that sends to them),
    // due tomorrow.
    jobs::enqueue(
        &mut pool.acquire().await.unwrap(),
        &jobs::NewJob::new(
            "test.notify",
            json!({"user_id": USER, "to": {"email": EMAIL, "phone": PHONE}, "note": format!("for {OTHER_EMAIL}")}),
        )
        .queue("privacy-test")
        .run_at(chrono::Utc::now() + chrono::Duration::days(1)),
    )
    .await
    .unwrap();
    stack.wait_saga(ORG, "completed").await;
    stack.wait_saga("org_2zebPrivacyApi", "completed").await;
    stack
        .wait_saga("org_2zebPrivacyRefused", "completed_with_errors")
        .await;
    stack.wait_idle().await;
    // The job table names them before the deletion: in arguments and in error histories.
    let in_args: i64 = sqlx::query_scalar(
        "select count(*) from onboard.job where strpos(lower(args::text), $1) > 0",
    )
    .bind(EMAIL.to_lowercase())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(in_args > 0, "no job's arguments name them");
    let refusals: i64 = sqlx::query_scalar(
        "select count(*) from onboard.job where strpos(lower(errors::text), $1) > 0",
    )
    .bind(REFUSED_EMAIL)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(refusals > 0, "no job's errors quote the refused address");
    let quoted: i64 = sqlx::query_scalar(
        "select count(*) from onboard.job where strpos(lower(errors::text), $1) > 0",
    )
    .bind(EMAIL.to_lowercase())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(quoted > 0, "no job's errors quote their address");

    let needles = [
        EMAIL,
        OTHER_EMAIL,
        API_EMAIL,
        REFUSED_EMAIL,
        FIRST,
        LAST,
        USERNAME,
        PHONE,
        IP,
        AGENT,
    ];
    // The search finds what is there: every needle is stored somewhere before the deletion.
    for needle in needles {
        assert!(
            !columns_mentioning(&pool, needle).await.is_empty(),
            "`{needle}` was never stored: the test would prove nothing"
        );
    }
    let recipients: Vec<String> = sqlx::query_scalar(
        "select output ->> 'recipient' from onboard.onboarding_step
          where name = 'welcome_email' and output ? 'recipient'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(recipients.len(), 2, "{recipients:?}");

    let mut deleted = acted(fixture("user.deleted.json"));
    deleted["data"]["id"] = json!(USER);
    stack.deliver(&deleted).await;
    let (state, errors): (String, String) = wait_for(
        "the user.deleted job to run",
        Duration::from_secs(60),
        || async {
            sqlx::query_as(
                "select state::text, errors::text from onboard.job
                  where kind = 'clerk.user.deleted' and (state <> 'running' and attempt > 0)",
            )
            .fetch_optional(&pool)
            .await
            .unwrap()
        },
    )
    .await;
    assert_eq!(state, "completed", "{errors}");
    stack.wait_idle().await;

    let mut leaks = Vec::new();
    for needle in needles {
        for (column, rows) in columns_mentioning(&pool, needle).await {
            leaks.push(format!("`{needle}` in {column} ({rows} rows)"));
        }
    }
    assert!(
        leaks.is_empty(),
        "personal data left after user.deleted: {leaks:#?}"
    );
    // Someone else's data stays, and so does the user's (non-personal) id on their memberships.
    assert!(!columns_mentioning(&pool, "Bystanderina").await.is_empty());
    assert!(
        !columns_mentioning(&pool, "bystander@example.com")
            .await
            .is_empty()
    );
    stack.stop().await;
}

#[tokio::test]
async fn the_purge_leaves_payloads_of_unexpected_shapes_alone_instead_of_failing() {
    // Found by the fuzz suite: `jsonb_set` through an array or a scalar is an error, which
    // would have made `user.deleted` retry for ever.
    let db = integration_tests::fresh_db().await;
    let user = "user_2oddShapes";
    let odd = [
        json!({"type": "user.created", "event_attributes": [], "data": {"id": user, "updated_at": 1}}),
        json!({"type": "session.created", "event_attributes": "x", "data": {"user_id": user}}),
        json!({"type": "session.created", "data": {"user_id": user, "user": 7}}),
        json!({"type": "organizationMembership.created", "data": {"public_user_data": {"user_id": user}, "x": []}}),
        json!({"type": "email.created", "event_attributes": {"http_request": []}, "data": {"user_id": user}}),
        json!({"type": "odd.thing", "data": ["mentions", user]}),
    ];
    for (n, payload) in odd.iter().enumerate() {
        sqlx::query(
            "insert into onboard.inbox (svix_id, event_type, payload, svix_timestamp, svix_signature)
             values ($1, $2, $3, 0, 'v1,x')",
        )
        .bind(format!("msg_odd{n}"))
        .bind(payload["type"].as_str().unwrap())
        .bind(sqlx::types::Json(payload))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let mut tx = db.pool.begin().await.unwrap();
    let purged = onboarding::directory::purge_user_data(&mut tx, user, &[])
        .await
        .expect("the purge must not fail on any payload shape");
    tx.commit().await.unwrap();
    assert!(purged.payloads >= 3, "{purged:?}");
}
