//! Support for the integration tests: one throwaway PostgreSQL cluster per test process, a
//! fresh migrated database per test, and waiting on conditions with a deadline (never sleeps
//! that hope).

pub mod dashboard;
pub mod stack;

use std::sync::OnceLock;

use jobs::fresh_db::FreshDatabases;
use jobs::local_pg::{Durability, LocalPostgres};
use sqlx::PgPool;

static DATABASES: OnceLock<FreshDatabases> = OnceLock::new();

fn databases() -> &'static FreshDatabases {
    DATABASES.get_or_init(|| {
        let cluster =
            LocalPostgres::start(None, Durability::Relaxed).expect("start a throwaway PostgreSQL");
        FreshDatabases::new(cluster, "onboard_template")
    })
}

/// The process's cluster, started on first use.
pub fn cluster() -> &'static LocalPostgres {
    databases().cluster()
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
    let url = databases()
        .create("test", true)
        .await
        .expect("create test database");
    // As large as a deployed process's pool: the worker fits its concurrency to it.
    connect(url, jobs::db::PoolSettings::default().max_connections).await
}

async fn connect(url: String, max_connections: u32) -> TestDb {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .connect(&url)
        .await
        .expect("connect test database");
    TestDb { url, pool }
}

pub use jobs::wait::wait_for;

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
    let url = databases()
        .create("empty", false)
        .await
        .expect("create empty database");
    connect(url, 20).await
}
