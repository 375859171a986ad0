//! A burst sized like a busy day's peak, on a slow day: no attempt may fail because the
//! worker's own connection pool ran dry.
//!
//! The slow day is made deterministic: Twilio answers after a second (saga steps hold their
//! connection across the call), and for three acquire timeouts every write to the user table
//! waits on a lock the test holds, so every `user.created` handler in flight holds its
//! connection that long. A worker whose jobs in flight outnumber its pool (the clerk queue
//! alone runs 200) then has handlers that wait longer than the acquire timeout for a
//! connection and fail `pool timed out`; one fitted to its pool (`worker::sizing`) has none.

use std::time::Duration;

use futures::StreamExt;
use integration_tests::stack::{
    Stack, StackOptions, organization_created, provider_settings, spawn_worker_runtime,
    user_created,
};
use integration_tests::wait_for;
use sqlx::{Connection, PgConnection};

/// The sagas started at once.
const SAGAS: usize = 100;
/// Clerk events delivered in all (the sagas' `organization.created` included).
const EVENTS: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_a_thousand_events_and_a_hundred_sagas_fails_no_attempt_on_the_pool() {
    // Twilio answers every create after a second, as a slow day's Twilio does: each saga's
    // Twilio step holds its connection that long.
    let stack = Stack::start(StackOptions {
        worker: false,
        slow_delay: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    // Everything is stored before the worker starts, so all of it is due at once.
    let mut events = Vec::with_capacity(EVENTS);
    for n in 0..SAGAS {
        events.push(organization_created(
            &format!("org_burst{n}"),
            &format!("burst-{n}-slow-twilio"),
            &format!("user_burst{n}"),
        ));
    }
    for n in 0..EVENTS - SAGAS {
        events.push(user_created(
            &format!("user_burst{n}"),
            &format!("user{n}@burst.test"),
        ));
    }
    futures::stream::iter(&events)
        .for_each_concurrent(32, |event| async {
            stack.deliver(event).await;
        })
        .await;

    // The slow day's database: writes to the user table wait on the test's lock.
    let mut blocker = PgConnection::connect(&stack.db.url).await.unwrap();
    sqlx::query("begin").execute(&mut blocker).await.unwrap();
    sqlx::query("lock table onboard.app_user in exclusive mode")
        .execute(&mut blocker)
        .await
        .unwrap();

    // The worker as deployed: a pool with the production settings, every job kind.
    let settings = jobs::db::PoolSettings::default();
    let pool = jobs::db::connect(&stack.db.url, &settings).await.unwrap();
    let providers = provider_settings(&stack.sandbox.base_url(), Duration::from_secs(5))
        .providers()
        .unwrap();
    let (stop, worker) = spawn_worker_runtime(pool, providers);

    wait_for(
        "a handler to wait on the user table",
        Duration::from_secs(60),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_locks
                  where not granted and relation = 'onboard.app_user'::regclass",
            )
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        },
    )
    .await;
    // The slowness lasts, it is not waited for: long enough for any handler left without a
    // connection to give up on the pool.
    tokio::time::sleep(settings.acquire_timeout * 3).await;
    sqlx::query("rollback").execute(&mut blocker).await.unwrap();

    wait_for(
        "every event applied and every saga past its Twilio step",
        Duration::from_secs(240),
        || async {
            let (events_left, sagas_left): (i64, i64) = sqlx::query_as(
                "select (select count(*) from onboard.job
                          where queue = $1 and state not in ('completed', 'discarded', 'cancelled')),
                        (select count(*) from onboard.job
                          where queue = $2 and state not in ('completed', 'discarded', 'cancelled'))",
            )
            .bind(onboarding::inbox::QUEUE)
            .bind(onboarding::start::QUEUE)
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
            (events_left == 0 && sagas_left == 0).then_some(())
        },
    )
    .await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;

    let sagas: i64 = sqlx::query_scalar("select count(*) from onboard.onboarding")
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(sagas, SAGAS as i64, "every organization got its saga");
    let on_the_pool: Vec<(i64, String, String)> = sqlx::query_as(
        "select j.id, j.kind, e->>'message' from onboard.job j, unnest(j.errors) e
          where e->>'message' ilike '%pool timed out%' order by j.id limit 5",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    assert!(
        on_the_pool.is_empty(),
        "attempts failed on the pool: {on_the_pool:?}"
    );
    stack.stop().await;
}
