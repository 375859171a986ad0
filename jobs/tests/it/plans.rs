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
    sqlx::query("alter table onboard.job disable trigger job_notify")
        .execute(&mut *conn)
        .await
        .unwrap();
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
