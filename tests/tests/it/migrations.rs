//! Upgrades: a database made by the previous release's migrations, holding that release's
//! data, takes the new migrations and the service finishes the work it holds.

use std::time::Duration;

use integration_tests::stack::{provider_settings, spawn_worker_runtime};
use integration_tests::{empty_db, wait_for};

/// The last migration of the previous landed release of `main`.
const PREVIOUS_RELEASE: i64 = 20261123000004;

/// The previous release's statement that started a saga (its `onboarding::start`): a saga row,
/// its step rows and its first step's job.
const PREVIOUS_START: &str = "
with saga as (
    insert into onboard.onboarding (clerk_org_id, source, request)
    values ($1, 'api', $2::jsonb)
    returning id
),
saga_steps as (
    insert into onboard.onboarding_step (onboarding_id, name, position)
    select saga.id, step.name, step.position
      from saga cross join unnest(array['create_org_record', 'default_permissions',
                                        'twilio_subaccount', 'welcome_email'])
                      with ordinality as step(name, position)
)
insert into onboard.job (kind, queue, args, max_attempts, unique_key)
select 'onboarding.create_org_record', 'onboarding', jsonb_build_object('onboarding_id', saga.id),
       11, 'onboarding:' || saga.id || ':create_org_record'
  from saga";

#[tokio::test]
async fn a_database_of_the_previous_release_is_migrated_and_its_saga_completes() {
    let db = empty_db().await;
    let migrator = jobs::db::migrator();
    assert!(
        migrator.iter().any(|m| m.version == PREVIOUS_RELEASE),
        "the previous release's last migration is still in migrations/"
    );
    migrator
        .run_to(PREVIOUS_RELEASE, &db.pool)
        .await
        .expect("the previous release's migrations");

    let request = serde_json::json!({
        "org_id": "org_upgrade1", "name": "Upgrade", "slug": "upgrade",
        "creator": {"user_id": "user_upgrade1", "email": "ada@example.com", "first_name": "Ada"},
        "source": "api"
    });
    sqlx::query(PREVIOUS_START)
        .bind("org_upgrade1")
        .bind(&request)
        .execute(&db.pool)
        .await
        .expect("a saga started by the previous release");

    jobs::db::migrate(&db.pool)
        .await
        .expect("the new migrations");

    let sandbox = sandbox::spawn("127.0.0.1:0".parse().unwrap(), Default::default())
        .await
        .expect("sandbox");
    let providers = provider_settings(&sandbox.base_url(), Duration::from_secs(5))
        .providers()
        .unwrap();
    let (stop, worker) = spawn_worker_runtime(db.pool.clone(), providers);
    wait_for(
        "the previous release's saga to complete",
        Duration::from_secs(90),
        || async {
            let state: String = sqlx::query_scalar(
                "select state from onboard.onboarding where clerk_org_id = 'org_upgrade1'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (state == "completed").then_some(())
        },
    )
    .await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
}

/// The SHA-384 of every migration of released versions: an applied migration is never edited
/// (add a new file instead). Each release appends its new migrations here.
const RELEASED: [(i64, &str); 4] = [
    (
        20261123000001,
        "d92c63ea53756f12e2ee49ac82e23910abd959c29ebcc12387c1d38e60d2b7084a73c3496a50af66f8616e3502ef9faa",
    ),
    (
        20261123000002,
        "98a8f0153ee1fa8680bbdafdae0f1c672984252acb84403d3e14ff7fa203118cb3b63c44b9c0d2cf679929f4b2991cee",
    ),
    (
        20261123000003,
        "c08084761374b81d58e87acd875068f347c808e3d8f6e899de8ecd83af34b452c20e03907f7f9a14711c2f64aa6be0e4",
    ),
    (
        20261123000004,
        "1e0941584332dbfca8702ddc600879e6a7de7c11f932816be31b1b6b6b891bbbf119bb13386a3be3a729f264c49f8a90",
    ),
];

#[test]
fn no_released_migration_is_edited() {
    let migrator = jobs::db::migrator();
    for (version, expected) in RELEASED {
        let migration = migrator
            .iter()
            .find(|m| m.version == version)
            .unwrap_or_else(|| panic!("released migration {version} was removed"));
        let checksum: String = migration
            .checksum
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            checksum, expected,
            "released migration {version} was edited: add a new migration instead"
        );
    }
}
