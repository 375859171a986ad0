//! The sandbox's magic values (DESIGN.md §7) end to end from events sent to the webhook alone —
//! made as `onboard send organization.created --with-creator --slug … --email …` makes them —
//! with no sandbox control call.

use ingress::send::event::{self, EventSpec};
use integration_tests::stack::{Stack, StackOptions};

/// Sends the creator's `user.created`, then `organization.created`; returns the org id.
async fn onboard(stack: &Stack, slug: &str, email: &str) -> String {
    let about = EventSpec {
        slug: Some(slug.to_owned()),
        email: Some(email.to_owned()),
        ..EventSpec::default()
    }
    .resolve();
    for event_type in ["user.created", "organization.created"] {
        stack
            .deliver(&event::build(event_type, &about).unwrap())
            .await;
    }
    about.org_id
}

fn statuses(effects: &[(u16, Option<String>)]) -> Vec<u16> {
    effects.iter().map(|(status, _)| *status).collect()
}

#[tokio::test]
async fn fail_twilio_slug_sent_only_to_the_webhook_compensates() {
    let stack = Stack::start(StackOptions::default()).await;
    let org = onboard(&stack, "acme-fail-twilio", "owner@example.com").await;
    assert!(
        !org.ends_with("-fail-twilio"),
        "the magic is in the slug only"
    );

    stack.wait_saga(&org, "compensated").await;
    let creates = stack
        .effects("create_subaccount", &format!("org:{org}"))
        .await;
    assert_eq!(statuses(&creates), [400]);
    assert!(
        stack
            .effects("send_email", "owner@example.com")
            .await
            .is_empty()
    );
    stack.stop().await;
}

#[tokio::test]
async fn flaky_twilio_slug_sent_only_to_the_webhook_completes_after_two_503s() {
    let stack = Stack::start(StackOptions::default()).await;
    let org = onboard(&stack, "acme-flaky-twilio", "owner@example.com").await;

    stack.wait_saga(&org, "completed").await;
    let creates = stack
        .effects("create_subaccount", &format!("org:{org}"))
        .await;
    assert_eq!(statuses(&creates), [503, 503, 201]);
    stack.stop().await;
}

#[tokio::test]
async fn fail_and_flaky_recipients_end_with_errors_and_completed() {
    let stack = Stack::start(StackOptions::default()).await;
    let failing = onboard(&stack, "acme-mail", "fail@example.com").await;
    let flaky = onboard(&stack, "acme-mail-too", "flaky@example.com").await;

    stack.wait_saga(&failing, "completed_with_errors").await;
    stack.wait_saga(&flaky, "completed").await;
    assert_eq!(
        statuses(&stack.effects("send_email", "fail@example.com").await),
        [422]
    );
    assert_eq!(
        statuses(&stack.effects("send_email", "flaky@example.com").await),
        [429, 429, 200]
    );
    stack.stop().await;
}
