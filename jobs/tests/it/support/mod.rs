//! Support for the queue's tests: one throwaway PostgreSQL cluster per test process, a fresh
//! migrated database per test, waiting on conditions with a deadline (never sleeps that hope),
//! in-process workers and worker processes.

pub mod process;
pub mod worker;

use std::sync::OnceLock;
use std::time::Duration;

use jobs::fresh_db::FreshDatabases;
use jobs::local_pg::{Durability, LocalPostgres};
use jobs::{NewJob, enqueue};
use sqlx::PgPool;

static DATABASES: OnceLock<FreshDatabases> = OnceLock::new();

fn databases() -> &'static FreshDatabases {
    DATABASES.get_or_init(|| {
        let cluster =
            LocalPostgres::start(None, Durability::Relaxed).expect("start a throwaway PostgreSQL");
        FreshDatabases::new(cluster, "jobs_template")
    })
}

/// How long a test waits for a condition before it fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A database of its own for one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// Its URL, for child processes.
    pub url: String,
    /// A pool on it.
    pub pool: PgPool,
}

impl TestDb {
    /// Another pool on the same database (a second worker's, say).
    pub async fn new_pool(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(&self.url)
            .await
            .expect("connect test database")
    }

    /// Enqueues one job; returns its id.
    pub async fn add(&self, job: NewJob) -> i64 {
        let mut conn = self.pool.acquire().await.unwrap();
        enqueue(&mut conn, &job).await.unwrap().id
    }

    /// The state of job `id` as text.
    pub async fn state(&self, id: i64) -> String {
        sqlx::query_scalar("select state::text from onboard.job where id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect("job exists")
    }

    /// Waits until job `id` is in `state`.
    pub async fn wait_state(&self, id: i64, state: &str) {
        wait_for(&format!("job {id} to be {state}"), DEADLINE, || async {
            (self.state(id).await == state).then_some(())
        })
        .await;
    }

    /// `select count(*)` of a query.
    pub async fn count(&self, query: &'static str) -> i64 {
        sqlx::query_scalar(query)
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }
}

/// Creates a fresh, migrated database (a copy of a migrated template).
pub async fn fresh_db() -> TestDb {
    let url = databases()
        .create("test", true)
        .await
        .expect("create test database");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect(&url)
        .await
        .expect("connect test database");
    TestDb { url, pool }
}

pub use jobs::wait::wait_for;
