//! Connecting to PostgreSQL and applying our migrations (tracked in `onboard._sqlx_migrations`).

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

/// Pool settings for one process.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Connections at most. A worker fits its jobs in flight to it (one connection each, plus
    /// LISTEN, fetchers, acker and heartbeat per queue).
    pub max_connections: u32,
    /// How long a request waits for a connection before failing.
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 40,
            acquire_timeout: Duration::from_secs(2),
        }
    }
}

/// Opens a pool; the first connection is made lazily so a process can start before the database.
pub fn connect_lazy(url: &str, settings: &PoolSettings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        // A ping before every checkout costs a round trip per request; a broken connection
        // fails its query instead and the pool replaces it.
        .test_before_acquire(false)
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy(url)
}

/// Opens a pool and checks that the database answers.
pub async fn connect(url: &str, settings: &PoolSettings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        // A ping before every checkout costs a round trip per request; a broken connection
        // fails its query instead and the pool replaces it.
        .test_before_acquire(false)
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect(url)
        .await
}

/// Our migrations, embedded at build time from `migrations/`.
pub fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("../migrations");
    migrator.create_schema("onboard");
    migrator.dangerous_set_table_name("onboard._sqlx_migrations");
    migrator
}

/// Applies every pending migration; a no-op when the schema is current.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrator().run(pool).await
}
