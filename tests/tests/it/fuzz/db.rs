//! The Clerk event handlers fuzzed on a real database, run as the worker runs them: every
//! `clerk.*` kind through `clerk_event::handle_with` with the default role mapping (the clerk
//! queue's handler), and `clerk.organization.created` through the event handler then the saga's
//! start (the saga's handler of that kind). Every case must end in success or a permanent error.
//!
//! Fast enough for a million cases by hand: `FUZZ_DB_THREADS` threads (default 2), each with a
//! database and one connection of its own (no pool, statements prepared once per connection);
//! cases run `FUZZ_DB_BATCH` (default 200) to a transaction, each inside a savepoint rolled back
//! after it, so every case starts from the same empty directory and nothing is ever committed.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;
use sqlx::{Connection, PgConnection};

use onboarding::clerk_event::{KINDS, ORGANIZATION_CREATED_KIND};
use onboarding::directory::RoleMapping;
use onboarding::start::InboxStartError;

use super::{cases, deep_nesting, json_value, mutated_fixture, runner};

const STORE: &str = "
insert into onboard.inbox (svix_id, event_type, payload, svix_timestamp, svix_signature)
values ('msg_' || gen_random_uuid(), $1, $2::text::jsonb, 0, 'v1,x') returning id";

/// What one case ended in.
#[derive(Debug)]
enum Outcome {
    /// PostgreSQL cannot store the payload (the ingress rejects such a body): no handler runs.
    Unstorable,
    /// The handler applied it.
    Applied,
    /// The handler refused it for good.
    Refused,
    /// The handler failed in a way the worker would retry: a finding.
    Retried(String),
}

#[derive(Default)]
struct Tally {
    cases: AtomicU64,
    unstorable: AtomicU64,
    applied: AtomicU64,
    refused: AtomicU64,
}

fn env_u32(var: &str, default: u32) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn fuzz_the_clerk_event_handlers_on_a_real_database_end_in_success_or_a_permanent_error() {
    let total = cases("FUZZ_DB_CASES", 1_000);
    let threads = env_u32("FUZZ_DB_THREADS", 2).max(1);
    let batch = env_u32("FUZZ_DB_BATCH", 200).max(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let urls: Vec<String> = (0..threads)
        .map(|_| rt.block_on(integration_tests::fresh_db()).url)
        .collect();
    let tally = Tally::default();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (i, url) in (0..threads).zip(&urls) {
            let share = total / threads + u32::from(i < total % threads);
            let tally = &tally;
            scope.spawn(move || run_share(url, share, batch, tally));
        }
    });
    let count = |n: &AtomicU64| n.load(Ordering::Relaxed);
    eprintln!(
        "fuzz db: {} cases on {threads} connections in {:.1?}: {} applied, {} refused, {} unstorable",
        count(&tally.cases),
        started.elapsed(),
        count(&tally.applied),
        count(&tally.refused),
        count(&tally.unstorable),
    );
    assert_eq!(count(&tally.cases), u64::from(total), "every case ran");
    // The generator reaches the handlers' happy paths too, not only their first check.
    assert!(count(&tally.applied) > 0, "no case applied cleanly");
}

/// Runs `cases` cases on a connection of its own to the database at `url`.
fn run_share(url: &str, cases: u32, batch: u32, tally: &Tally) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let conn = Cell::new(Some(rt.block_on(PgConnection::connect(url)).unwrap()));
    let in_batch = Cell::new(0_u32);
    let kinds: Vec<&str> = KINDS
        .iter()
        .copied()
        .chain([ORGANIZATION_CREATED_KIND])
        .collect();
    let input = (
        0..kinds.len(),
        prop_oneof![
            4 => mutated_fixture(),
            1 => json_value(),
            1 => deep_nesting().prop_map(|b| serde_json::from_slice(&b).unwrap_or(Value::Null)),
        ],
        any::<bool>(),
    );
    runner(cases)
        .run(&input, |(which, payload, matching_kind)| {
            // The job's kind usually matches the stored type, as the ingress makes it.
            let kind = match payload.get("type").and_then(Value::as_str) {
                Some(t) if matching_kind && kinds.contains(&format!("clerk.{t}").as_str()) => {
                    format!("clerk.{t}")
                }
                _ => kinds[which].to_owned(),
            };
            let payload = serde_json::to_string(&payload).unwrap();
            let mut held = conn.take().expect("the connection");
            let outcome = rt.block_on(async {
                if in_batch.get() == 0 {
                    sqlx::query("begin").execute(&mut held).await.unwrap();
                }
                let outcome = one_case(&mut held, &kind, &payload).await;
                in_batch.set(in_batch.get() + 1);
                if in_batch.get() == batch {
                    sqlx::query("rollback").execute(&mut held).await.unwrap();
                    in_batch.set(0);
                }
                outcome
            });
            conn.set(Some(held));
            tally.cases.fetch_add(1, Ordering::Relaxed);
            match outcome {
                Outcome::Unstorable => &tally.unstorable,
                Outcome::Applied => &tally.applied,
                Outcome::Refused => &tally.refused,
                Outcome::Retried(error) => {
                    return Err(TestCaseError::fail(format!(
                        "`{kind}` on a malformed payload would retry: {error}"
                    )));
                }
            }
            .fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
}

/// Stores `payload` and runs job `kind` on it, inside a savepoint rolled back afterwards.
async fn one_case(conn: &mut PgConnection, kind: &str, payload: &str) -> Outcome {
    sqlx::query("savepoint fuzz_case")
        .execute(&mut *conn)
        .await
        .unwrap();
    let stored = sqlx::query_scalar::<_, i64>(STORE)
        .bind(kind.trim_start_matches("clerk."))
        .bind(payload)
        .fetch_one(&mut *conn)
        .await;
    let outcome = match stored {
        Ok(inbox_id) => as_the_worker(conn, kind, inbox_id).await,
        // Invalid text (a NUL) or a program limit: the payload is refused before any handler.
        Err(sqlx::Error::Database(e))
            if e.code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("54")) =>
        {
            Outcome::Unstorable
        }
        Err(e) => panic!("storing a case failed: {e}"),
    };
    sqlx::query("rollback to savepoint fuzz_case")
        .execute(&mut *conn)
        .await
        .unwrap();
    outcome
}

/// What the worker's handler of `kind` does in its transaction, before completing the job.
async fn as_the_worker(conn: &mut PgConnection, kind: &str, inbox_id: i64) -> Outcome {
    let roles = RoleMapping::default();
    match onboarding::clerk_event::handle_with(conn, kind, inbox_id, &roles).await {
        Ok(()) => {}
        Err(e) if e.is_permanent() => return Outcome::Refused,
        Err(e) => return Outcome::Retried(e.to_string()),
    }
    if kind != ORGANIZATION_CREATED_KIND {
        return Outcome::Applied;
    }
    match onboarding::start::start_from_inbox(conn, inbox_id).await {
        Ok(_) | Err(InboxStartError::OrganizationDeleted(_)) => Outcome::Applied,
        Err(e) if e.is_permanent() => Outcome::Refused,
        Err(e) => Outcome::Retried(e.to_string()),
    }
}
