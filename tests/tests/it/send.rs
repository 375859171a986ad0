//! `onboard send`'s made events: every Clerk event type of DESIGN.md §5, made with fresh ids,
//! is accepted by a running ingress, stored, and processed by the worker.

use std::time::Duration;

use ingress::send::event::{self, EventSpec};
use integration_tests::stack::{Stack, StackOptions};
use integration_tests::wait_for;

#[tokio::test]
async fn every_made_event_type_is_stored_and_processed() {
    let stack = Stack::start(StackOptions::default()).await;
    let about = EventSpec::default().resolve();
    let send = |event_type: &'static str| {
        let event = event::build(event_type, &about).unwrap();
        let stack = &stack;
        async move { stack.deliver(&event).await }
    };

    send("user.created").await;
    send("organization.created").await;
    stack.wait_saga(&about.org_id, "completed").await;
    for event_type in [
        "user.updated",
        "organizationMembership.created",
        "organizationMembership.updated",
        "organizationInvitation.created",
        "organizationInvitation.accepted",
        "organizationInvitation.revoked",
        "session.created",
        "organization.updated",
        "organizationMembership.deleted",
        "user.deleted",
        "organization.deleted",
    ] {
        send(event_type).await;
    }

    let mut stored: Vec<String> =
        sqlx::query_scalar("select event_type from onboard.inbox order by event_type")
            .fetch_all(&stack.db.pool)
            .await
            .unwrap();
    stored.dedup();
    let mut every: Vec<String> = event::EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect();
    every.sort();
    assert_eq!(stored, every, "one stored delivery per event type");

    // Every stored event but the ignored session.created has a job, and each job completes.
    let jobs = wait_for(
        "every event's job to finish",
        Duration::from_secs(90),
        || async {
            let rows: Vec<(String, String, String)> = sqlx::query_as(
                "select i.event_type, j.kind, j.state::text from onboard.inbox i
                   join onboard.job j on (j.args->>'inbox_id')::bigint = i.id
                  order by i.event_type",
            )
            .fetch_all(&stack.db.pool)
            .await
            .unwrap();
            rows.iter()
                .all(|(_, _, state)| {
                    ["completed", "discarded", "cancelled"].contains(&state.as_str())
                })
                .then_some(rows)
        },
    )
    .await;
    let unfinished: Vec<_> = jobs
        .iter()
        .filter(|(_, _, state)| state != "completed")
        .collect();
    assert!(unfinished.is_empty(), "jobs not completed: {unfinished:?}");
    let kinds: Vec<String> = jobs.iter().map(|(_, kind, _)| kind.clone()).collect();
    let expected: Vec<String> = every
        .iter()
        .filter(|t| *t != "session.created")
        .map(|t| format!("clerk.{t}"))
        .collect();
    assert_eq!(kinds, expected, "one job per acted-on event type");
    let ignored: bool = sqlx::query_scalar(
        "select ignored from onboard.inbox where event_type = 'session.created'",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert!(ignored, "session.created is stored and marked ignored");

    // The events were applied: the user and the organization end as tombstones.
    let (org_deleted, user_deleted): (bool, bool) = sqlx::query_as(
        "select (select deleted_at is not null from onboard.organization where clerk_org_id = $1),
                (select deleted_at is not null from onboard.app_user where clerk_user_id = $2)",
    )
    .bind(&about.org_id)
    .bind(&about.user_id)
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert!(org_deleted && user_deleted);
    stack.stop().await;
}
