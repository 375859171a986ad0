//! The hot statements keep index scans however many finished rows exist, with the generic
//! plans prepared statements switch to.

use crate::support::fresh_db;

fn assert_no_seq_scan_on_job(what: &str, plan: &[String]) {
    let text = plan.join("\n");
    assert!(
        !text.contains("Seq Scan on job"),
        "{what} scans the whole job table:\n{text}"
    );
    assert!(text.contains("Index"), "{what} uses no index:\n{text}");
}

#[tokio::test]
async fn fetch_and_ack_plans_are_index_scans_with_a_million_finished_rows() {
    let db = fresh_db().await;
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::query(
        "insert into onboard.job (kind, state, attempt, finalized_at)
         select 'done', 'completed', 1, now() - (n % 1000) * interval '1 second' from generate_series(1, 1000000) n",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query("insert into onboard.job (kind) select 'todo' from generate_series(1, 2000)")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("analyze onboard.job")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("set plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();

    let fetch = format!(
        "prepare fetch_jobs(text, text, bigint, bigint) as {}",
        jobs::backend::sql::FETCH
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(fetch))
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: Vec<String> =
        sqlx::query_scalar("explain execute fetch_jobs('default', 'w', 30000, 100)")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    println!("the fetch's generic plan:\n{}", plan.join("\n"));
    assert!(plan.join("\n").contains("Index"), "{plan:?}");
    assert_no_seq_scan_on_job("fetch", &plan);

    let ack = format!(
        "prepare ack_jobs(bigint[], int[]) as {}",
        jobs::backend::sql::COMPLETE
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(ack))
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: Vec<String> =
        sqlx::query_scalar("explain execute ack_jobs('{1000001,1000002,1000003}', '{1,1,1}')")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    assert_no_seq_scan_on_job("ack", &plan);
}

/// Buffers read by the scans of `onboard.job` in an `explain (analyze, buffers, format json)`
/// plan, and the plan's text for the failure message.
fn scan_buffers(node: &serde_json::Value) -> i64 {
    let mut total = 0;
    let kind = node["Node Type"].as_str().unwrap_or_default();
    let on_job = node["Relation Name"] == "job"
        || node["Index Name"]
            .as_str()
            .is_some_and(|index| index.starts_with("job_"));
    if on_job && kind.contains("Scan") {
        total += node["Shared Hit Blocks"].as_i64().unwrap_or(0)
            + node["Shared Read Blocks"].as_i64().unwrap_or(0);
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        total += scan_buffers(child);
    }
    total
}

#[tokio::test]
async fn fetch_is_a_range_scan_bounded_by_run_at_with_a_million_future_jobs() {
    let db = fresh_db().await;
    let mut conn = db.pool.acquire().await.unwrap();
    // A large backlog of jobs waiting on time, and fewer due jobs than the batch limit.
    sqlx::query(
        "insert into onboard.job (kind, state, attempt, run_at)
         select 'later', case when n % 2 = 0 then 'scheduled' else 'retryable' end::onboard.job_state,
                n % 2, now() + interval '1 hour' + (n % 86400) * interval '1 second'
           from generate_series(1, 1000000) n",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(
        "insert into onboard.job (kind, state, run_at)
         select 'due', case when n <= 40 then 'available' else 'retryable' end::onboard.job_state,
                now() - interval '1 minute'
           from generate_series(1, 50) n",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query("analyze onboard.job")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("set plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    let fetch = format!(
        "prepare fetch_jobs(text, text, bigint, bigint) as {}",
        jobs::backend::sql::FETCH
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(fetch))
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: Vec<String> =
        sqlx::query_scalar("explain execute fetch_jobs('default', 'w', 30000, 100)")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    println!("the fetch's generic plan:\n{}", plan.join("\n"));
    assert_no_seq_scan_on_job("fetch", &plan);

    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    let analyzed: sqlx::types::Json<serde_json::Value> = sqlx::query_scalar(
        "explain (analyze, buffers, format json) execute fetch_jobs('default', 'w', 30000, 100)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    let buffers = scan_buffers(&analyzed.0[0]["Plan"]);
    println!("buffers read by the fetch's scans of job: {buffers}");
    assert!(
        buffers < 1000,
        "the fetch read {buffers} buffers of job's indexes and heap with 50 due jobs: it walks \
         the waiting backlog\n{:#}",
        analyzed.0
    );
}
