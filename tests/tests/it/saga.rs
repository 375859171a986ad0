//! The onboarding saga end to end (DESIGN.md §4): webhooks through the real ingress, the real
//! worker and provider clients, and the sandbox's ledger as the outside world's record.

use std::time::Duration;

use integration_tests::stack::{Stack, StackOptions, organization_created, organization_deleted};
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

/// The step's stored output.
async fn step_output(stack: &Stack, org: &str, step: &str) -> serde_json::Value {
    sqlx::query_scalar(
        "select s.output from onboard.onboarding_step s join onboard.onboarding o on o.id = s.onboarding_id
          where o.clerk_org_id = $1 and s.name = $2",
    )
    .bind(org)
    .bind(step)
    .fetch_one(&stack.db.pool)
    .await
    .unwrap()
}

/// The kinds of the jobs of the organization's saga, in the order they were enqueued.
async fn saga_job_kinds(stack: &Stack, org: &str) -> Vec<String> {
    sqlx::query_scalar(
        "select j.kind from onboard.job j join onboard.onboarding o
             on (j.args->>'onboarding_id')::bigint = o.id
          where o.clerk_org_id = $1 order by j.id",
    )
    .bind(org)
    .fetch_all(&stack.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn new_organization_is_onboarded_once_with_one_subaccount_one_email_and_its_metadata() {
    let stack = Stack::start(StackOptions::default()).await;
    let (org, user) = ("org_happy1", "user_happy1");
    stack
        .deliver_new_org(org, "happy", user, "owner@happy.test")
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

/// DESIGN.md §4 keeps one transaction per external call; the steps that touch only our
/// database run in the transaction that starts the saga (the `organization.created` job), so
/// they have no job of their own, and each ran once.
#[tokio::test]
async fn the_steps_that_touch_only_our_database_run_in_the_transaction_that_starts_the_saga() {
    let stack = Stack::start(StackOptions::default()).await;
    let (org, user) = ("org_local1", "user_local1");
    stack
        .deliver_new_org(org, "local", user, "owner@local.test")
        .await;
    stack.wait_saga(org, "completed").await;
    stack.wait_idle().await;

    assert_eq!(
        saga_job_kinds(&stack, org).await,
        [
            "onboarding.twilio_subaccount",
            "onboarding.welcome_email",
            "onboarding.sync_metadata"
        ],
        "the saga's jobs: one per external call"
    );
    let steps: Vec<(String, String, i32)> = sqlx::query_as(
        "select s.name, s.state, s.attempts from onboard.onboarding_step s
           join onboard.onboarding o on o.id = s.onboarding_id
          where o.clerk_org_id = $1 and s.name = any($2) order by s.position",
    )
    .bind(org)
    .bind(&onboarding::saga::LOCAL_STEPS[..])
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(
        steps,
        [
            ("create_org_record".to_owned(), "done".to_owned(), 1),
            ("default_permissions".to_owned(), "done".to_owned(), 1)
        ]
    );
    assert_eq!(permission_rows(&stack, org).await, 27 + 13 + 5);
    stack.stop().await;
}

/// A local step that fails in the transaction that starts the saga fails that attempt of the
/// `organization.created` job; its retry rolls the local steps back to a savepoint and leaves
/// them to their own step jobs, which finish once the fault is gone.
#[tokio::test]
async fn a_local_step_failing_as_the_saga_starts_fails_that_attempt_then_runs_in_its_own_job() {
    let stack = Stack::start(StackOptions::default()).await;
    let (org, user) = ("org_localfail1", "user_localfail1");
    sqlx::raw_sql(
        "create function onboard.test_refuse_grants() returns trigger language plpgsql as $$
         begin raise exception 'grants refused by the test'; end $$;
         create trigger test_refuse_grants before insert on onboard.role_permission
            for each row execute function onboard.test_refuse_grants();",
    )
    .execute(&stack.db.pool)
    .await
    .unwrap();
    stack
        .deliver_new_org(org, "localfail", user, "owner@localfail.test")
        .await;
    wait_for(
        "default_permissions' own job to fail an attempt",
        Duration::from_secs(60),
        || async {
            let failed: i64 = sqlx::query_scalar(
                "select count(*) from onboard.job
                  where kind = 'onboarding.default_permissions' and state = 'retryable'",
            )
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
            (failed > 0).then_some(())
        },
    )
    .await;
    sqlx::raw_sql("drop trigger test_refuse_grants on onboard.role_permission")
        .execute(&stack.db.pool)
        .await
        .unwrap();
    stack.wait_saga(org, "completed").await;
    stack.wait_idle().await;

    assert_eq!(permission_rows(&stack, org).await, 27 + 13 + 5);
    let (state, attempt): (String, i32) = sqlx::query_as(
        "select state::text, attempt from onboard.job where kind = 'clerk.organization.created'",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(
        (state.as_str(), attempt),
        ("completed", 2),
        "the first attempt failed with the grants; the second started the saga"
    );
    assert_eq!(
        saga_job_kinds(&stack, org).await,
        [
            "onboarding.create_org_record",
            "onboarding.default_permissions",
            "onboarding.twilio_subaccount",
            "onboarding.welcome_email",
            "onboarding.sync_metadata"
        ]
    );
    stack.stop().await;
}

#[tokio::test]
async fn permanent_twilio_failure_compensates_every_started_step_then_restart_after_heal_completes()
{
    let stack = Stack::start(StackOptions::default()).await;
    let (org, user) = ("org_failing1", "user_failing1");
    stack.sandbox.register(org, "acme-fail-twilio").await;
    stack
        .deliver_new_org(org, "acme-fail-twilio", user, "owner@failing.test")
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
    stack
        .deliver_new_org(org, "acme-flaky-twilio", user, "owner@flaky.test")
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
    // Each attempt that ran is counted, the two that failed as well as the one that succeeded.
    let twilio = steps(&stack, org).await[2].clone();
    assert_eq!((twilio.1.as_str(), twilio.2), ("done", 3), "{twilio:?}");
    stack.stop().await;
}

#[tokio::test]
async fn slow_twilio_times_out_and_the_retry_adopts_the_account_it_created() {
    let stack = Stack::start(StackOptions::default()).await;
    let (org, user) = ("org_slow1", "user_slow1");
    stack.sandbox.register(org, "acme-slow-twilio").await;
    stack
        .deliver_new_org(org, "acme-slow-twilio", user, "owner@slow.test")
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
    let output = step_output(&stack, org, "twilio_subaccount").await;
    assert_eq!(output["adopted"], true, "{output}");
    stack.stop().await;
}

#[tokio::test]
async fn permanent_email_failure_ends_completed_with_errors_and_flaky_email_sends_once() {
    let stack = Stack::start(StackOptions::default()).await;
    stack
        .deliver_new_org(
            "org_mailfail",
            "mailfail",
            "user_mailfail",
            "fail@mail.test",
        )
        .await;
    stack
        .deliver_new_org(
            "org_mailflaky",
            "mailflaky",
            "user_mailflaky",
            "flaky@mail.test",
        )
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
async fn the_welcome_email_greets_the_creator_by_the_first_name_in_the_directory() {
    let stack = Stack::start(StackOptions::default()).await;
    let (org, user) = ("org_greet1", "user_greet1");
    // The fixture's user is John.
    stack
        .deliver_new_org(org, "greet", user, "john@greet.test")
        .await;
    stack.wait_saga(org, "completed").await;
    let sent = stack
        .sandbox
        .state()
        .sent_email(&format!("welcome/{org}/{user}"))
        .expect("a welcome email under the step's key");
    assert_eq!(sent["to"], serde_json::json!(["john@greet.test"]));
    let text = sent["text"].as_str().unwrap_or_default();
    assert!(text.starts_with("Hello John,"), "{text}");
    stack.stop().await;
}

/// An attempt sent the welcome email and lost its commit (a crash), then the creator changed
/// address: the next attempt's payload differs under the same key, which Resend refuses.
/// That refusal proves the first send: the saga completes, and no second email goes out.
#[tokio::test]
async fn a_welcome_email_sent_by_an_attempt_whose_commit_was_lost_is_not_sent_again_to_a_changed_address()
 {
    let mut stack = Stack::start(StackOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let (org, user) = ("org_moved1", "user_moved1");
    stack
        .deliver_new_org(org, "moved", user, "new@moved.test")
        .await;
    // What the lost attempt sent, to the address the creator had then, under the step's key.
    let earlier = reqwest::Client::new()
        .post(format!("{}/emails", stack.sandbox.base_url()))
        .bearer_auth(&stack.sandbox.state().config().resend_api_key)
        .header("Idempotency-Key", format!("welcome/{org}/{user}"))
        .json(&serde_json::json!({
            "from": "Onboard <hello@example.com>",
            "to": ["old@moved.test"],
            "subject": "Welcome to moved",
            "text": "Hello John,"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(earlier.status(), 200);

    stack.start_worker();
    wait_for("the saga to end", Duration::from_secs(90), || async {
        stack
            .saga_state(org)
            .await
            .filter(|state| state != "running")
    })
    .await;
    assert_eq!(stack.saga_state(org).await.as_deref(), Some("completed"));
    let refused: Vec<u16> = stack
        .effects("send_email", "new@moved.test")
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    assert_eq!(refused, [409], "no email reached the new address");
    assert_eq!(stack.effects("send_email", "old@moved.test").await.len(), 1);
    let output = step_output(&stack, org, "welcome_email").await;
    assert_eq!(output["already_sent"], true, "{output}");
    assert!(output["email_id"].is_null(), "{output}");
    stack.stop().await;
}

#[tokio::test]
async fn deleted_organization_is_offboarded_and_its_subaccount_closed() {
    let stack = Stack::start(StackOptions::default()).await;
    let (org, user) = ("org_leaving1", "user_leaving1");
    stack
        .deliver_new_org(org, "leaving", user, "owner@leaving.test")
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
        .deliver_new_org(org, "acme-slow-twilio", user, "owner@killed.test")
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
    stack
        .deliver_new_org(org, "retry", user, "fail@retry.test")
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
        Err(onboarding::saga::SagaError::NotRestartable { .. })
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

// ---------------------------------------------------------------------------------------
// Holes closed by issue 9, operator actions, honest cancellation.
// ---------------------------------------------------------------------------------------

async fn saga_id(stack: &Stack, org: &str) -> i64 {
    sqlx::query_scalar("select id from onboard.onboarding where clerk_org_id = $1")
        .bind(org)
        .fetch_one(&stack.db.pool)
        .await
        .unwrap()
}

/// `(step, state, attempts)` of the organization's saga, in order.
async fn steps(stack: &Stack, org: &str) -> Vec<(String, String, i32)> {
    sqlx::query_as(
        "select s.name, s.state, s.attempts from onboard.onboarding_step s
           join onboard.onboarding o on o.id = s.onboarding_id
          where o.clerk_org_id = $1 order by s.position",
    )
    .bind(org)
    .fetch_all(&stack.db.pool)
    .await
    .unwrap()
}

/// Sagas that are not terminal although no live step or compensation job is theirs.
async fn stranded_sagas(stack: &Stack) -> Vec<i64> {
    sqlx::query_scalar(
        "select o.id from onboard.onboarding o
          where o.state in ('running', 'compensating')
            and not exists (select 1 from onboard.job j
                             where j.args->>'onboarding_id' = o.id::text
                               and j.kind like 'onboarding.%' and j.kind <> 'onboarding.sync_metadata'
                               and j.state in ('available', 'scheduled', 'running', 'retryable'))",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap()
}

/// Turns a saga's live job of `kind` into a settling attempt whose worker died: running, out
/// of attempts, its lease expired. The lease reaper then discards it outside any handler.
async fn strand_job(stack: &Stack, id: i64, kind: &str) {
    let done = sqlx::query(
        "update onboard.job
            set state = 'running', attempt = max_attempts, attempted_at = now(),
                lease_owner = 'dead-worker', lease_expires_at = now() - interval '1 second'
          where kind = $1 and args->>'onboarding_id' = $2::text
            and state in ('available', 'scheduled', 'retryable')",
    )
    .bind(kind)
    .bind(id.to_string())
    .execute(&stack.db.pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(done, 1, "one live {kind} job of saga {id}");
}

#[tokio::test]
async fn sagas_whose_settling_attempt_ended_outside_the_handler_are_settled_by_the_reconciler() {
    let mut stack = Stack::start(StackOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    // A running saga whose first step's settling attempt dies…
    let running = "org_stranded1";
    stack
        .deliver(&organization_created(running, "stranded", "user_stranded1"))
        .await;
    let running_id = stack.start_saga_now().await.onboarding_id;
    strand_job(&stack, running_id, "onboarding.create_org_record").await;
    // …and a compensating one whose compensation's settling attempt dies.
    let compensating = "org_stranded2";
    stack
        .deliver(&organization_created(
            compensating,
            "stranded2",
            "user_stranded2",
        ))
        .await;
    let compensating_id = stack.start_saga_now().await.onboarding_id;
    let mut tx = stack.db.pool.begin().await.unwrap();
    let saga = onboarding::saga::lock(&mut tx, compensating_id)
        .await
        .unwrap()
        .unwrap();
    onboarding::saga::step_attempt_failed_for_good(
        &mut tx,
        &saga,
        "create_org_record",
        "failed for good",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    sqlx::query("update onboard.job set state = 'completed', finalized_at = now() where kind = 'onboarding.create_org_record' and args->>'onboarding_id' = $1::text")
        .bind(compensating_id.to_string())
        .execute(&stack.db.pool)
        .await
        .unwrap();
    strand_job(&stack, compensating_id, "onboarding.undo_create_org_record").await;

    stack.start_worker();
    stack.wait_saga(running, "compensated").await;
    stack.wait_saga(compensating, "compensation_failed").await;
    stack.wait_idle().await;
    let discarded: i64 = sqlx::query_scalar(
        "select count(*) from onboard.job where lease_owner is null and state = 'discarded'
            and kind in ('onboarding.create_org_record', 'onboarding.undo_create_org_record')",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(discarded, 2, "the reaper discarded both settling attempts");
    assert_eq!(stranded_sagas(&stack).await, Vec::<i64>::new());
    let mut conn = stack.db.pool.acquire().await.unwrap();
    let stranded = onboarding::saga::stranded(&mut conn, 100).await.unwrap();
    assert_eq!(stranded, Vec::<i64>::new());
    drop(conn);
    stack.stop().await;
}

#[tokio::test]
async fn a_step_attempt_whose_lease_was_lost_commits_nothing() {
    let stack = Stack::start(StackOptions {
        slow_delay: Duration::from_secs(4),
        client_timeout: Duration::from_secs(20),
        ..Default::default()
    })
    .await;
    // The saga stays running after its Twilio step: its welcome email waits.
    jobs::admin::pause(&stack.db.pool, onboarding::saga::EMAIL_QUEUE)
        .await
        .unwrap();
    let (org, user) = ("org_fenced1", "user_fenced1");
    stack.sandbox.register(org, "acme-slow-twilio").await;
    stack
        .deliver_new_org(org, "acme-slow-twilio", user, "owner@fenced.test")
        .await;
    let key = format!("org:{org}");
    wait_for(
        "the Twilio create to reach the sandbox",
        Duration::from_secs(60),
        || async { (!stack.effects("create_subaccount", &key).await.is_empty()).then_some(()) },
    )
    .await;
    // While the attempt waits for Twilio's answer its lease is lost: rescued as the reaper does.
    let rescued = sqlx::query(
        "update onboard.job
            set state = 'retryable', run_at = now(), lease_owner = null, lease_expires_at = null,
                errors = array_append(errors, jsonb_build_object('attempt', attempt, 'kind', 'lease_expired',
                                                                 'message', 'lease expired'))
          where kind = 'onboarding.twilio_subaccount' and state = 'running'",
    )
    .execute(&stack.db.pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(rescued, 1);
    wait_for(
        "the rescued attempt to finish the Twilio step",
        Duration::from_secs(60),
        || async {
            let done: Option<String> = sqlx::query_scalar(
                "select state::text from onboard.job where kind = 'onboarding.twilio_subaccount' and state = 'completed'",
            )
            .fetch_optional(&stack.db.pool)
            .await
            .unwrap();
            done.map(|_| ())
        },
    )
    .await;
    let twilio = steps(&stack, org).await[2].clone();
    assert_eq!(
        (twilio.1.as_str(), twilio.2),
        ("done", 1),
        "only the rescued attempt's work is committed: {twilio:?}"
    );
    jobs::admin::resume(&stack.db.pool, onboarding::saga::EMAIL_QUEUE)
        .await
        .unwrap();
    stack.wait_saga(org, "completed").await;
    stack.wait_idle().await;
    assert_eq!(stack.effects("create_subaccount", &key).await.len(), 1);
    assert_eq!(active_subaccounts(&stack, org).await, 1);
    stack.stop().await;
}

#[tokio::test]
async fn the_onboarding_api_refuses_an_organization_already_deleted_with_409() {
    use secrecy::ExposeSecret;
    let stack = Stack::start(StackOptions::default()).await;
    let org = "org_gone1";
    stack.deliver(&organization_deleted(org)).await;
    wait_for("the tombstone", Duration::from_secs(60), || async {
        let deleted: Option<bool> = sqlx::query_scalar(
            "select deleted_at is not null from onboard.organization where clerk_org_id = $1",
        )
        .bind(org)
        .fetch_optional(&stack.db.pool)
        .await
        .unwrap();
        deleted.filter(|d| *d)
    })
    .await;
    let (_, key) = onboarding::api_key::create(&stack.db.pool, "server")
        .await
        .unwrap();
    let response = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/onboarding",
            stack.ingress.ingress_addr
        ))
        .bearer_auth(key.expose_secret())
        .header("idempotency-key", "gone-1")
        .json(&serde_json::json!({
            "org_id": org, "name": "Gone", "slug": "gone", "creator_user_id": "user_gone1",
            "creator_email": "owner@gone.test"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "organization_deleted", "{body}");
    assert_eq!(stack.saga_state(org).await, None, "no saga was started");
    stack.wait_idle().await;
    assert!(
        stack
            .effects("create_subaccount", &format!("org:{org}"))
            .await
            .is_empty()
    );
    stack.stop().await;
}

/// The saga's first step upserts the organization from the request, whose clock (`0`) loses to
/// any Clerk snapshot: an organization known only as a stub takes the request's name and slug,
/// one whose `organization.updated` was stored first keeps Clerk's.
#[tokio::test]
async fn the_first_step_fills_a_stub_organization_from_the_request_and_keeps_a_clerk_snapshot() {
    use secrecy::ExposeSecret;
    let stack = Stack::start(StackOptions::default()).await;
    let (stub, known) = ("org_stub1", "org_known1");
    sqlx::query("insert into onboard.organization (clerk_org_id) values ($1)")
        .bind(stub)
        .execute(&stack.db.pool)
        .await
        .unwrap();
    let mut updated = integration_tests::stack::fixture("organization.updated.json");
    updated["data"]["id"] = serde_json::json!(known);
    updated["data"]["name"] = serde_json::json!("Known by Clerk");
    updated["data"]["slug"] = serde_json::json!("known-by-clerk");
    stack.deliver(&updated).await;
    wait_for("Clerk's snapshot", Duration::from_secs(60), || async {
        let clock: Option<Option<i64>> = sqlx::query_scalar(
            "select clerk_updated_at from onboard.organization where clerk_org_id = $1",
        )
        .bind(known)
        .fetch_optional(&stack.db.pool)
        .await
        .unwrap();
        clock.flatten()
    })
    .await;
    let (_, key) = onboarding::api_key::create(&stack.db.pool, "server")
        .await
        .unwrap();
    for org in [stub, known] {
        let response = reqwest::Client::new()
            .post(format!(
                "http://{}/v1/onboarding",
                stack.ingress.ingress_addr
            ))
            .bearer_auth(key.expose_secret())
            .header("idempotency-key", format!("first-step-{org}"))
            .json(&serde_json::json!({
                "org_id": org, "name": "Named by the API", "slug": "named-by-the-api",
                "creator_user_id": "user_firststep1", "creator_email": "owner@firststep.test"
            }))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        stack.wait_saga(org, "completed").await;
    }
    stack.wait_idle().await;

    let names: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "select clerk_org_id, name, slug from onboard.organization
          where clerk_org_id = any($1) order by clerk_org_id",
    )
    .bind(vec![known, stub])
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    let name = |n: &str| Some(n.to_owned());
    assert_eq!(
        names,
        [
            (
                known.to_owned(),
                name("Known by Clerk"),
                name("known-by-clerk")
            ),
            (
                stub.to_owned(),
                name("Named by the API"),
                name("named-by-the-api")
            ),
        ]
    );
    stack.stop().await;
}

/// Starts a worker process, lets its Twilio create reach the sandbox and kills it before the
/// step's transaction commits: the sub-account exists, nothing records it.
async fn kill_a_worker_after_its_twilio_create(stack: &Stack, org: &str) {
    use tokio::io::AsyncBufReadExt;
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
    child.kill().await.unwrap();
}

#[tokio::test]
async fn an_unrecorded_twilio_create_is_closed_when_its_saga_is_cancelled() {
    let mut stack = Stack::start(StackOptions {
        worker: false,
        slow_delay: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let (org, user) = ("org_unrecorded1", "user_unrecorded1");
    stack.sandbox.register(org, "acme-slow-twilio").await;
    stack
        .deliver_new_org(org, "acme-slow-twilio", user, "owner@unrecorded.test")
        .await;
    kill_a_worker_after_its_twilio_create(&stack, org).await;
    assert_eq!(active_subaccounts(&stack, org).await, 1);
    assert_eq!(steps(&stack, org).await[2].2, 0, "the create is unrecorded");

    // The operator cancels the saga: the Twilio step may have reached Twilio, so it is undone.
    let id = saga_id(&stack, org).await;
    let mut tx = stack.db.pool.begin().await.unwrap();
    assert!(onboarding::saga::cancel(&mut tx, id).await.unwrap());
    tx.commit().await.unwrap();
    sqlx::query("update onboard.job set lease_expires_at = now() where state = 'running'")
        .execute(&stack.db.pool)
        .await
        .unwrap();
    stack.start_worker();
    stack.wait_saga(org, "compensated").await;
    stack.wait_idle().await;
    assert_eq!(active_subaccounts(&stack, org).await, 0);
    assert_eq!(
        stack
            .effects("close_subaccount", &format!("org:{org}"))
            .await
            .len(),
        1
    );
    assert_eq!(steps(&stack, org).await[2].1, "compensated");
    stack.stop().await;
}

#[tokio::test]
async fn restart_fences_the_previous_runs_leftover_step_jobs() {
    let mut stack = Stack::start(StackOptions {
        worker: false,
        ..Default::default()
    })
    .await;
    let (org, user) = ("org_rerun1", "user_rerun1");
    stack
        .deliver_new_org(org, "rerun", user, "owner@rerun.test")
        .await;
    let id = stack.start_saga_now().await.onboarding_id;
    // Run 1: step 1 succeeds (its job enqueues step 2's), then an operator cancels and the
    // compensation ends the saga before step 2's job ran: that job is left over.
    let mut tx = stack.db.pool.begin().await.unwrap();
    let saga = onboarding::saga::lock(&mut tx, id).await.unwrap().unwrap();
    onboarding::saga::step_succeeded(&mut tx, &saga, "create_org_record", &serde_json::json!({}))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    sqlx::query("update onboard.job set state = 'completed', finalized_at = now() where kind = 'onboarding.create_org_record'")
        .execute(&stack.db.pool)
        .await
        .unwrap();
    let mut tx = stack.db.pool.begin().await.unwrap();
    assert!(onboarding::saga::cancel(&mut tx, id).await.unwrap());
    let saga = onboarding::saga::lock(&mut tx, id).await.unwrap().unwrap();
    onboarding::saga::compensation_succeeded(
        &mut tx,
        &saga,
        "create_org_record",
        &serde_json::json!({}),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(stack.saga_state(org).await.as_deref(), Some("compensated"));
    let leftover: i64 = sqlx::query_scalar(
        "select id from onboard.job where kind = 'onboarding.default_permissions' and state = 'available'",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();

    let mut tx = stack.db.pool.begin().await.unwrap();
    onboarding::saga::restart(&mut tx, id).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        integration_tests::job_state(&stack.db.pool, leftover).await,
        "cancelled",
        "restart cancels the previous run's live jobs"
    );
    // The reconciler finds the new run's job (its keys name the run) and leaves the saga be.
    let mut conn = stack.db.pool.acquire().await.unwrap();
    let stranded = onboarding::saga::stranded(&mut conn, 100).await.unwrap();
    assert_eq!(stranded, Vec::<i64>::new());
    let mut tx = stack.db.pool.begin().await.unwrap();
    let reconciled = onboarding::saga::reconcile(&mut tx).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(reconciled, Some(onboarding::saga::Reconciled::default()));
    // Even revived by hand, the previous run's job changes nothing.
    jobs::admin::retry_now(&stack.db.pool, leftover)
        .await
        .unwrap();
    stack.start_worker();
    stack.wait_saga(org, "completed").await;
    stack.wait_idle().await;
    assert_eq!(
        integration_tests::job_state(&stack.db.pool, leftover).await,
        "completed"
    );
    let attempts: Vec<i32> = steps(&stack, org).await.into_iter().map(|s| s.2).collect();
    assert_eq!(attempts, [1, 1, 1, 1], "every step ran once, in order");
    assert_eq!(active_subaccounts(&stack, org).await, 1);
    stack.stop().await;
}

/// Lets the saga's Twilio step fail once (flaky Twilio) and holds its retry back, as a long
/// backoff would: the saga is running, before its point of no return, with steps 1-3 started.
async fn hold_the_twilio_step_in_its_backoff(stack: &Stack, org: &str) {
    wait_for(
        "the Twilio step to wait for its retry",
        Duration::from_secs(60),
        || async {
            let held = sqlx::query(
                "update onboard.job set state = 'scheduled', run_at = now() + interval '1 hour'
                  where kind = 'onboarding.twilio_subaccount' and state = 'retryable'",
            )
            .execute(&stack.db.pool)
            .await
            .unwrap()
            .rows_affected();
            let twilio = steps(stack, org).await.get(2).cloned();
            assert!(
                twilio.as_ref().is_none_or(|t| t.1 != "done"),
                "the Twilio step was not held back: {twilio:?}"
            );
            (held == 1).then_some(())
        },
    )
    .await;
    assert_eq!(stack.saga_state(org).await.as_deref(), Some("running"));
}

#[tokio::test]
async fn organization_deleted_during_a_running_saga_cancels_it_and_compensates() {
    let stack = Stack::start(StackOptions::default()).await;
    let (org, user) = ("org_cancel1", "user_cancel1");
    stack.sandbox.register(org, "acme-flaky-twilio").await;
    stack
        .deliver_new_org(org, "acme-flaky-twilio", user, "owner@cancel.test")
        .await;
    hold_the_twilio_step_in_its_backoff(&stack, org).await;
    stack.deliver(&organization_deleted(org)).await;
    stack.wait_saga(org, "compensated").await;
    wait_for("the offboarding", Duration::from_secs(60), || async {
        (org_status(&stack, org).await == "deleted").then_some(())
    })
    .await;
    assert_eq!(permission_rows(&stack, org).await, 0);
    let states: Vec<String> = steps(&stack, org).await.into_iter().map(|s| s.1).collect();
    assert_eq!(
        states,
        ["compensated", "compensated", "compensated", "skipped"]
    );
    assert_eq!(active_subaccounts(&stack, org).await, 0);
    assert!(
        stack
            .effects("send_email", "owner@cancel.test")
            .await
            .is_empty()
    );
    stack.stop().await;
}

#[tokio::test]
async fn operator_cancel_of_a_running_saga_compensates_every_started_step() {
    let stack = Stack::start(StackOptions::default()).await;
    let (org, user) = ("org_opcancel1", "user_opcancel1");
    stack.sandbox.register(org, "acme-flaky-twilio").await;
    stack
        .deliver_new_org(org, "acme-flaky-twilio", user, "owner@opcancel.test")
        .await;
    hold_the_twilio_step_in_its_backoff(&stack, org).await;
    let id = saga_id(&stack, org).await;
    let mut tx = stack.db.pool.begin().await.unwrap();
    assert!(onboarding::saga::cancel(&mut tx, id).await.unwrap());
    tx.commit().await.unwrap();
    stack.wait_saga(org, "compensated").await;
    assert_eq!(permission_rows(&stack, org).await, 0);
    assert_eq!(org_status(&stack, org).await, "failed");
    let states: Vec<String> = steps(&stack, org).await.into_iter().map(|s| s.1).collect();
    assert_eq!(
        states,
        ["compensated", "compensated", "compensated", "skipped"]
    );
    assert_eq!(active_subaccounts(&stack, org).await, 0);
    // Cancelling it again is refused: it is terminal.
    let mut tx = stack.db.pool.begin().await.unwrap();
    let refused = onboarding::saga::cancel(&mut tx, id).await.unwrap_err();
    assert_eq!(refused.code(), "saga_terminal", "{refused}");
    stack.stop().await;
}

async fn job_of(stack: &Stack, kind: &str, org: &str) -> i64 {
    sqlx::query_scalar(
        "select j.id from onboard.job j join onboard.onboarding o on j.args->>'onboarding_id' = o.id::text
          where j.kind = $1 and o.clerk_org_id = $2 order by j.id desc limit 1",
    )
    .bind(kind)
    .bind(org)
    .fetch_one(&stack.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn operator_actions_on_a_saga_step_job_move_its_saga_on() {
    let stack = Stack::start(StackOptions::default()).await;
    let pool = &stack.db.pool;
    for (org, user) in [
        ("org_jobcancel1", "user_jobcancel1"),
        ("org_jobretry1", "user_jobretry1"),
    ] {
        stack.sandbox.register(org, "acme-flaky-twilio").await;
        stack
            .deliver_new_org(org, "acme-flaky-twilio", user, &format!("{user}@jobs.test"))
            .await;
        hold_the_twilio_step_in_its_backoff(&stack, org).await;
    }

    // Cancelling the running saga's current step job fails the step: the saga compensates.
    let twilio_job = job_of(&stack, "onboarding.twilio_subaccount", "org_jobcancel1").await;
    let mut tx = pool.begin().await.unwrap();
    let cancelled = onboarding::saga::cancel_step_job(&mut tx, twilio_job)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(cancelled.saga_state, "compensating");
    assert_eq!(
        integration_tests::job_state(pool, twilio_job).await,
        "cancelled"
    );
    stack.wait_saga("org_jobcancel1", "compensated").await;
    let states: Vec<String> = steps(&stack, "org_jobcancel1")
        .await
        .into_iter()
        .map(|s| s.1)
        .collect();
    assert_eq!(
        states,
        ["compensated", "compensated", "compensated", "skipped"]
    );
    assert_eq!(permission_rows(&stack, "org_jobcancel1").await, 0);
    // Its saga has ended: retrying the job is refused, and so is cancelling a finished job.
    let mut tx = pool.begin().await.unwrap();
    let refused = onboarding::saga::retry_step_job(&mut tx, twilio_job)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "saga_terminal", "{refused}");
    let refused = onboarding::saga::cancel_step_job(&mut tx, twilio_job)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "job_finished", "{refused}");
    drop(tx);

    // Retrying the running saga's waiting step job runs it now: the saga completes.
    let twilio_job = job_of(&stack, "onboarding.twilio_subaccount", "org_jobretry1").await;
    let mut tx = pool.begin().await.unwrap();
    onboarding::saga::retry_step_job(&mut tx, twilio_job)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    stack.wait_saga("org_jobretry1", "completed").await;
    assert_eq!(active_subaccounts(&stack, "org_jobretry1").await, 1);

    // A job that is not a saga's step is not theirs to act on.
    let clerk_job: i64 = sqlx::query_scalar(
        "select id from onboard.job where kind not like 'onboarding.%' order by id limit 1",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let refused = onboarding::saga::cancel_step_job(&mut tx, clerk_job)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "not_a_saga_job", "{refused}");
    let refused = onboarding::saga::retry_step_job(&mut tx, i64::MAX)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "job_not_found", "{refused}");
    drop(tx);
    stack.stop().await;
}

#[tokio::test]
async fn offboarding_stops_waiting_for_an_onboarding_that_does_not_end() {
    let stack = Stack::start(StackOptions::default()).await;
    // The saga passes its point of no return, then waits for ever: its email queue is paused.
    jobs::admin::pause(&stack.db.pool, onboarding::saga::EMAIL_QUEUE)
        .await
        .unwrap();
    let (org, user) = ("org_waiting1", "user_waiting1");
    stack
        .deliver_new_org(org, "waiting", user, "owner@waiting.test")
        .await;
    wait_for("the Twilio step", Duration::from_secs(60), || async {
        (steps(&stack, org).await.get(2).map(|s| s.1.clone()) == Some("done".into())).then_some(())
    })
    .await;
    stack.deliver(&organization_deleted(org)).await;
    let offboard: i64 = wait_for("the offboarding to wait", Duration::from_secs(60), || async {
        sqlx::query_scalar(
            "select id from onboard.job where kind = 'offboarding.close_org' and state = 'scheduled'",
        )
        .fetch_optional(&stack.db.pool)
        .await
        .unwrap()
    })
    .await;
    assert_eq!(stack.saga_state(org).await.as_deref(), Some("running"));
    // An hour later (its bound) offboarding closes the sub-account anyway.
    sqlx::query(
        "update onboard.job set created_at = created_at - interval '2 hours', run_at = now() where id = $1",
    )
    .bind(offboard)
    .execute(&stack.db.pool)
    .await
    .unwrap();
    wait_for("the offboarding", Duration::from_secs(60), || async {
        (integration_tests::job_state(&stack.db.pool, offboard).await == "completed").then_some(())
    })
    .await;
    assert_eq!(org_status(&stack, org).await, "deleted");
    assert_eq!(active_subaccounts(&stack, org).await, 0);
    stack.stop().await;
}
