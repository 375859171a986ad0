//! Support for the integration tests: one throwaway PostgreSQL cluster per test process, a
//! fresh migrated database per test, and waiting on conditions with a deadline (never sleeps
//! that hope).

pub mod dashboard;
pub mod stack;

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jobs::local_pg::{Durability, LocalPostgres};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;

static CLUSTER: OnceLock<LocalPostgres> = OnceLock::new();
static TEMPLATE: OnceCell<()> = OnceCell::const_new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);
const TEMPLATE_DB: &str = "onboard_template";

/// The process's cluster, started on first use.
pub fn cluster() -> &'static LocalPostgres {
    CLUSTER.get_or_init(|| {
        LocalPostgres::start(None, Durability::Relaxed).expect("start a throwaway PostgreSQL")
    })
}

/// A database of its own for one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// Its URL, for child processes.
    pub url: String,
    /// A pool on it.
    pub pool: PgPool,
}

/// Creates a fresh, migrated database (a copy of a migrated template).
pub async fn fresh_db() -> TestDb {
    let pg = cluster();
    TEMPLATE
        .get_or_init(|| async {
            let mut admin = PgConnection::connect(&pg.url("postgres"))
                .await
                .expect("connect");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "create database {TEMPLATE_DB}"
            )))
            .execute(&mut admin)
            .await
            .expect("create template");
            let mut conn = PgConnection::connect(&pg.url(TEMPLATE_DB))
                .await
                .expect("connect template");
            jobs::db::migrator()
                .run(&mut conn)
                .await
                .expect("migrate template");
            conn.close().await.expect("close");
        })
        .await;
    let name = format!(
        "test_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::SeqCst)
    );
    let mut admin = PgConnection::connect(&pg.url("postgres"))
        .await
        .expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "create database {name} template {TEMPLATE_DB}"
    )))
    .execute(&mut admin)
    .await
    .expect("create test database");
    let url = pg.url(&name);
    // As large as a deployed process's pool: the worker fits its concurrency to it.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(jobs::db::PoolSettings::default().max_connections)
        .connect(&url)
        .await
        .expect("connect test database");
    TestDb { url, pool }
}

/// Polls `check` until it returns `Some`, failing the test after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The state of job `id` as text.
pub async fn job_state(pool: &PgPool, id: i64) -> String {
    sqlx::query_scalar("select state::text from onboard.job where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("job exists")
}

/// Creates an empty database (no migrations applied), for upgrade tests.
pub async fn empty_db() -> TestDb {
    let pg = cluster();
    let name = format!(
        "empty_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::SeqCst)
    );
    let mut admin = PgConnection::connect(&pg.url("postgres"))
        .await
        .expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut admin)
        .await
        .expect("create empty database");
    let url = pg.url(&name);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect(&url)
        .await
        .expect("connect empty database");
    TestDb { url, pool }
}
