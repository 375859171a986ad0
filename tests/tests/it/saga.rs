//! The onboarding saga end to end (DESIGN.md §4): webhooks through the real ingress, the real
//! worker and provider clients, and the sandbox's ledger as the outside world's record.

use std::time::Duration;

use integration_tests::stack::{
    Stack, StackOptions, organization_created, organization_deleted, user_created,
};
use integration_tests::wait_for;

async fn permission_rows(stack: &Stack, org: &str) -> i64 {
    sqlx::query_scalar(
        "select count(*) from onboard.role_permission p join onboard.organization o on o.id = p.organization_id
          where o.clerk_org_id = $1",
    )
    .bind(org)
    .fetch_one(&stack.db.pool)
    .await
    .unwrap()
}

async fn org_status(stack: &Stack, org: &str) -> String {
    sqlx::query_scalar("select onboarding_status from onboard.organization where clerk_org_id = $1")
        .bind(org)
        .fetch_one(&stack.db.pool)
        .await
        .unwrap()
}

async fn active_subaccounts(stack: &Stack, org: &str) -> usize {
    let name = format!("org:{org}");
    stack
        .sandbox
        .subaccounts()
        .await
        .into_iter()
        .filter(|a| {
            let v = serde_json::to_value(a).unwrap();
            v["friendly_name"] == name.as_str() && v["status"] == "active"
        })
        .count()
}

#[tokio::test]
async fn new_organization_is_onboarded_once_with_one_subaccount_one_email_and_its_metadata() {
    let stack = Stack::start(StackOptions::default()).await;
    let (org, user) = ("org_happy1", "user_happy1");
    stack.deliver(&user_created(user, "owner@happy.test")).await;
    stack
        .deliver(&organization_created(org, "happy", user))
        .await;
    stack.wait_saga(org, "completed").await;
    stack.wait_idle().await;

    let key = format!("org:{org}");
    assert_eq!(stack.effects("create_subaccount", &key).await.len(), 1);
    assert_eq!(
        stack.effects("send_email", "owner@happy.test").await.len(),
        1
    );
    let metadata = stack.effects("update_org_metadata", org).await;
    assert!(
        !metadata.is_empty() && metadata.iter().all(|(status, _)| *status == 200),
        "{metadata:?}"
    );
    assert_eq!(permission_rows(&stack, org).await, 27 + 13 + 5);
    assert_eq!(org_status(&stack, org).await, "active");
    let states: Vec<String> = sqlx::query_scalar(
        "select s.state from onboard.onboarding_step s join onboard.onboarding o on o.id = s.onboarding_id
          where o.clerk_org_id = $1 order by s.position",
    )
    .bind(org)
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(states, ["done", "done", "done", "done"]);
    stack.stop().await;
}

#[tokio::test]
async fn permanent_twilio_failure_compensates_every_started_step_then_restart_after_heal_completes()
{
    let stack = Stack::start(StackOptions::default()).await;
    let (org, user) = ("org_failing1", "user_failing1");
    stack.sandbox.register(org, "acme-fail-twilio").await;
    stack
        .deliver(&user_created(user, "owner@failing.test"))
        .await;
    stack
        .deliver(&organization_created(org, "acme-fail-twilio", user))
        .await;
    stack.wait_saga(org, "compensated").await;
    stack.wait_idle().await;

    assert_eq!(
        permission_rows(&stack, org).await,
        0,
        "permission rows are deleted"
    );
    assert_eq!(
        org_status(&stack, org).await,
        "failed",
        "the org record is kept, marked failed"
    );
    assert_eq!(active_subaccounts(&stack, org).await, 0);
    let creates = stack
        .effects("create_subaccount", &format!("org:{org}"))
        .await;
    assert!(
        creates.iter().all(|(status, _)| *status == 400),
        "{creates:?}"
    );
    assert!(
        stack
            .effects("send_email", "owner@failing.test")
            .await
            .is_empty()
    );

    // The operator heals the provider and restarts the saga from step 1.
    stack.sandbox.heal("acme-fail-twilio").await;
    let id: i64 = sqlx::query_scalar("select id from onboard.onboarding where clerk_org_id = $1")
        .bind(org)
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    let mut tx = stack.db.pool.begin().await.unwrap();
    onboarding::saga::restart(&mut tx, id).await.unwrap();
    tx.commit().await.unwrap();
    stack.wait_saga(org, "completed").await;
    stack.wait_idle().await;
    assert_eq!(active_subaccounts(&stack, org).await, 1);
    assert_eq!(permission_rows(&stack, org).await, 45);
    assert_eq!(org_status(&stack, org).await, "active");
    stack.stop().await;
}

#[tokio::test]
async fn flaky_twilio_completes_with_exactly_one_created_subaccount() {
    let stack = Stack::start(StackOptions::default()).await;
    let (org, user) = ("org_flaky1", "user_flaky1");
    stack.sandbox.register(org, "acme-flaky-twilio").await;
    stack.deliver(&user_created(user, "owner@flaky.test")).await;
    stack
        .deliver(&organization_created(org, "acme-flaky-twilio", user))
        .await;
    stack.wait_saga(org, "completed").await;
    let creates = stack
        .effects("create_subaccount", &format!("org:{org}"))
        .await;
    let created: Vec<_> = creates
        .iter()
        .filter(|(status, _)| *status == 201)
        .collect();
    assert_eq!(created.len(), 1, "{creates:?}");
    assert_eq!(
        creates.iter().filter(|(status, _)| *status == 503).count(),
        2
    );
    assert_eq!(active_subaccounts(&stack, org).await, 1);
    stack.stop().await;
}

#[tokio::test]
async fn slow_twilio_times_out_and_the_retry_adopts_the_account_it_created() {
    let stack = Stack::start(StackOptions::default()).await;
    let (org, user) = ("org_slow1", "user_slow1");
    stack.sandbox.register(org, "acme-slow-twilio").await;
    stack.deliver(&user_created(user, "owner@slow.test")).await;
    stack
        .deliver(&organization_created(org, "acme-slow-twilio", user))
        .await;
    stack.wait_saga(org, "completed").await;
    let creates = stack
        .effects("create_subaccount", &format!("org:{org}"))
        .await;
    assert_eq!(
        creates.len(),
        1,
        "one create, adopted after the timeout: {creates:?}"
    );
    assert_eq!(active_subaccounts(&stack, org).await, 1);
    let adopted: bool = sqlx::query_scalar(
        "select (s.output->>'adopted')::bool from onboard.onboarding_step s
           join onboard.onboarding o on o.id = s.onboarding_id
          where o.clerk_org_id = $1 and s.name = 'twilio_subaccount'",
    )
    .bind(org)
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert!(adopted);
    stack.stop().await;
}

#[tokio::test]
async fn permanent_email_failure_ends_completed_with_errors_and_flaky_email_sends_once() {
    let stack = Stack::start(StackOptions::default()).await;
    stack
        .deliver(&user_created("user_mailfail", "fail@mail.test"))
        .await;
    stack
        .deliver(&organization_created(
            "org_mailfail",
            "mailfail",
            "user_mailfail",
        ))
        .await;
    stack
        .deliver(&user_created("user_mailflaky", "flaky@mail.test"))
        .await;
    stack
        .deliver(&organization_created(
            "org_mailflaky",
            "mailflaky",
            "user_mailflaky",
        ))
        .await;
    stack
        .wait_saga("org_mailfail", "completed_with_errors")
        .await;
    stack.wait_saga("org_mailflaky", "completed").await;
    stack.wait_idle().await;
    // Past the point of no return nothing is undone.
    assert_eq!(active_subaccounts(&stack, "org_mailfail").await, 1);
    let sent: Vec<_> = stack.effects("send_email", "flaky@mail.test").await;
    assert_eq!(
        sent.iter().filter(|(status, _)| *status == 200).count(),
        1,
        "{sent:?}"
    );
    assert_eq!(
        sent.iter().filter(|(status, _)| *status == 429).count(),
        2,
        "{sent:?}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn deleted_organization_is_offboarded_and_its_subaccount_closed() {
    let stack = Stack::start(StackOptions::default()).await;
    let (org, user) = ("org_leaving1", "user_leaving1");
    stack
        .deliver(&user_created(user, "owner@leaving.test"))
        .await;
    stack
        .deliver(&organization_created(org, "leaving", user))
        .await;
    stack.wait_saga(org, "completed").await;
    assert_eq!(active_subaccounts(&stack, org).await, 1);
    stack.deliver(&organization_deleted(org)).await;
    wait_for(
        "the sub-account to be closed",
        Duration::from_secs(60),
        || async {
            (stack
                .effects("close_subaccount", &format!("org:{org}"))
                .await
                .len()
                == 1)
                .then_some(())
        },
    )
    .await;
    stack.wait_idle().await;
    assert_eq!(active_subaccounts(&stack, org).await, 0);
    assert_eq!(org_status(&stack, org).await, "deleted");
    stack.stop().await;
}

#[tokio::test]
async fn organization_deleted_during_a_running_saga_cancels_it_and_compensates() {
    // No worker yet: the saga waits at its first step while the deletion arrives.
    let mut stack = Stack::start(StackOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let (org, user) = ("org_cancel1", "user_cancel1");
    stack
        .deliver(&organization_created(org, "cancelled", user))
        .await;
    // Start its saga now, deterministically, as the `clerk.organization.created` job would.
    assert!(stack.start_saga_now().await.created);
    stack.deliver(&organization_deleted(org)).await;
    stack.start_worker();
    wait_for("the saga to end", Duration::from_secs(90), || async {
        let state = stack.saga_state(org).await.unwrap_or_default();
        onboarding::saga::is_terminal(&state).then_some(state)
    })
    .await;
    stack.wait_idle().await;
    let state = stack.saga_state(org).await.unwrap();
    assert!(state == "compensated" || state == "completed", "{state}");
    assert_eq!(
        active_subaccounts(&stack, org).await,
        0,
        "offboarding leaves no active sub-account"
    );
    stack.stop().await;
}

#[tokio::test]
async fn worker_killed_between_the_twilio_create_and_its_commit_leaves_one_subaccount_after_recovery()
 {
    use tokio::io::AsyncBufReadExt;
    let mut stack = Stack::start(StackOptions {
        worker: false,
        slow_delay: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let (org, user) = ("org_killed1", "user_killed1");
    // The sandbox creates the account at once but answers 5 s later: the window to kill in.
    stack.sandbox.register(org, "acme-slow-twilio").await;
    stack
        .deliver(&user_created(user, "owner@killed.test"))
        .await;
    stack
        .deliver(&organization_created(org, "acme-slow-twilio", user))
        .await;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_test-worker"))
        .args([
            stack.db.url.as_str(),
            "-",
            "saga",
            &stack.sandbox.base_url(),
            "30000",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
    let key = format!("org:{org}");
    wait_for(
        "the child's create to reach Twilio",
        Duration::from_secs(60),
        || async { (!stack.effects("create_subaccount", &key).await.is_empty()).then_some(()) },
    )
    .await;
    child.kill().await.unwrap(); // SIGKILL: the step's transaction never commits.
    assert_eq!(stack.saga_state(org).await.as_deref(), Some("running"));

    // Let the dead worker's lease run out now rather than in two minutes.
    sqlx::query("update onboard.job set lease_expires_at = now() where state = 'running'")
        .execute(&stack.db.pool)
        .await
        .unwrap();
    stack.start_worker();
    stack.wait_saga(org, "completed").await;
    assert_eq!(
        stack.effects("create_subaccount", &key).await.len(),
        1,
        "the retry adopted, never created again"
    );
    assert_eq!(active_subaccounts(&stack, org).await, 1);
    stack.stop().await;
}

#[tokio::test]
async fn operator_retry_of_a_failed_welcome_email_completes_the_saga_after_heal() {
    let stack = Stack::start(StackOptions::default()).await;
    let (org, user) = ("org_retry1", "user_retry1");
    stack.deliver(&user_created(user, "fail@retry.test")).await;
    stack
        .deliver(&organization_created(org, "retry", user))
        .await;
    stack.wait_saga(org, "completed_with_errors").await;
    stack.wait_idle().await;
    let id: i64 = sqlx::query_scalar("select id from onboard.onboarding where clerk_org_id = $1")
        .bind(org)
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    // Retrying a saga that did not fail that way is refused.
    let mut tx = stack.db.pool.begin().await.unwrap();
    assert!(matches!(
        onboarding::saga::restart(&mut tx, id).await,
        Err(onboarding::saga::SagaError::WrongState { .. })
    ));
    drop(tx);

    stack.sandbox.heal("fail@retry.test").await;
    let mut tx = stack.db.pool.begin().await.unwrap();
    onboarding::saga::retry(&mut tx, id).await.unwrap();
    tx.commit().await.unwrap();
    stack.wait_saga(org, "completed").await;
    stack.wait_idle().await;
    let sent = stack.effects("send_email", "fail@retry.test").await;
    assert_eq!(
        sent.iter().filter(|(status, _)| *status == 200).count(),
        1,
        "{sent:?}"
    );
    assert_eq!(
        active_subaccounts(&stack, org).await,
        1,
        "nothing was undone"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_step_whose_last_attempt_ended_outside_its_handler_still_settles_the_saga() {
    let mut stack = Stack::start(StackOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let org = "org_settle1";
    stack
        .deliver(&organization_created(org, "settle", "user_settle1"))
        .await;
    stack.start_saga_now().await;
    // As if every real attempt of step 1 had timed out: the next one is the settling attempt.
    sqlx::query("update onboard.job set attempt = $1 where kind = 'onboarding.create_org_record'")
        .bind(onboarding::start::STEP_MAX_ATTEMPTS)
        .execute(&stack.db.pool)
        .await
        .unwrap();
    stack.start_worker();
    stack.wait_saga(org, "compensated").await;
    let (state, message): (String, String) = sqlx::query_as(
        "select state::text, errors[cardinality(errors)]->>'message' from onboard.job where kind = 'onboarding.create_org_record'",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(state, "discarded");
    assert!(message.contains("gave up"), "{message}");
    stack.stop().await;
}
