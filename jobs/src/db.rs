//! Connecting to PostgreSQL, waiting for it at start, and applying our migrations (tracked in
//! `onboard._sqlx_migrations`).

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Pool settings for one process.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Connections at most. A worker fits its jobs in flight to it (one connection each, plus
    /// LISTEN, fetchers, acker and heartbeat per queue).
    pub max_connections: u32,
    /// How long a request waits for a connection before failing.
    pub acquire_timeout: Duration,
    /// Plan each prepared statement once per connection (`plan_cache_mode =
    /// force_generic_plan`). For a worker: its statements are key and range lookups whose best
    /// plan does not depend on the parameters, and PostgreSQL otherwise re-plans the fetch at
    /// every call once its table has statistics (the planning costs more than the run).
    pub generic_plans: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 40,
            acquire_timeout: Duration::from_secs(2),
            generic_plans: false,
        }
    }
}

/// Opens a pool; the first connection is made lazily so a process can start before the database.
pub fn connect_lazy(url: &str, settings: &PoolSettings) -> Result<PgPool, sqlx::Error> {
    Ok(pool_options(settings).connect_lazy_with(connect_options(url, settings)?))
}

/// Opens a pool and checks that the database answers.
pub async fn connect(url: &str, settings: &PoolSettings) -> Result<PgPool, sqlx::Error> {
    pool_options(settings)
        .connect_with(connect_options(url, settings)?)
        .await
}

fn pool_options(settings: &PoolSettings) -> PgPoolOptions {
    PgPoolOptions::new()
        // A ping before every checkout costs a round trip per request; a broken connection
        // fails its query instead and the pool replaces it.
        .test_before_acquire(false)
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
}

fn connect_options(url: &str, settings: &PoolSettings) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    Ok(if settings.generic_plans {
        options.options([("plan_cache_mode", "force_generic_plan")])
    } else {
        options
    })
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

/// Why the database cannot serve this build yet.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// It does not answer.
    #[error("the database is not reachable")]
    Unreachable(#[source] sqlx::Error),
    /// It answers, but this build's migrations are not all applied (`onboard migrate`).
    #[error(
        "the database answers but is not migrated (latest applied {applied:?}, this build needs {needed})"
    )]
    NotMigrated {
        /// The latest migration applied, if any.
        applied: Option<i64>,
        /// The latest migration of this build.
        needed: i64,
    },
}

/// Checks once that the database answers and holds every migration of this build.
pub async fn check_ready(pool: &PgPool) -> Result<(), NotReady> {
    const LATEST: &str = "select max(version) from onboard._sqlx_migrations where success";
    let needed = migrator().iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> = match sqlx::query_scalar(LATEST).fetch_one(pool).await {
        Ok(applied) => applied,
        // 42P01/3F000: no migrations table or schema yet.
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P01" | "3F000")) => {
            None
        }
        Err(sqlx::Error::PoolTimedOut) => {
            return Err(NotReady::Unreachable(connect_error(pool).await));
        }
        Err(e) => return Err(NotReady::Unreachable(e)),
    };
    if applied.is_some_and(|v| v >= needed) {
        Ok(())
    } else {
        Err(NotReady::NotMigrated { applied, needed })
    }
}

/// Why a connection cannot be made (the pool's own error only says it timed out).
async fn connect_error(pool: &PgPool) -> sqlx::Error {
    use sqlx::Connection as _;
    match sqlx::PgConnection::connect_with(&pool.connect_options()).await {
        Ok(conn) => {
            let _ = conn.close().await;
            sqlx::Error::PoolTimedOut
        }
        Err(e) => e,
    }
}

/// Retries at start: exponential backoff from 200 ms up to 5 s, forever.
fn startup_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .with_jitter()
}

/// Waits until [`check_ready`] passes, retrying with [`startup_backoff`] and logging each failed
/// try. Stop it by dropping the future.
pub async fn wait_until_ready(pool: &PgPool) {
    let mut tries = 0_u32;
    let _ = (|| check_ready(pool))
        .retry(startup_backoff())
        .notify(|error, delay| {
            tries += 1;
            tracing::warn!(
                try_number = tries,
                retry_in = ?delay,
                error = %describe(error),
                "waiting for the database"
            );
        })
        .await;
    if tries > 0 {
        tracing::info!(tries, "the database is ready");
    }
}

/// Whether `error` says the database cannot serve now (unreachable, starting or stopping,
/// out of connections, a deadlock) rather than refusing the statement: worth retrying later.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        // 08: connection exception, 53: insufficient resources, 57: operator intervention
        // (shutdown, terminated backend), 3D: no such database, 55000: the database does not
        // accept connections, 40: serialization failure / deadlock (retry).
        sqlx::Error::Database(e) => e.code().is_some_and(|code| {
            ["08", "53", "57", "3D", "40"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "55000"
        }),
        _ => false,
    }
}

/// Runs `operation` until it succeeds or fails for a reason other than [`is_unavailable`],
/// retrying with [`startup_backoff`] and logging each try under `what`. For the statements a
/// role runs once at start, after [`wait_until_ready`]: the database may restart in between.
pub async fn retry_while_unavailable<T, F, Fut>(what: &str, operation: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut tries = 0_u32;
    operation
        .retry(startup_backoff())
        .when(is_unavailable)
        .notify(|error, delay| {
            tries += 1;
            tracing::warn!(try_number = tries, retry_in = ?delay, %error, "{what}: the database is unavailable");
        })
        .await
}

/// The error with its cause, as `anyhow`'s `{:#}` prints a chain.
fn describe(error: &NotReady) -> String {
    match error {
        NotReady::Unreachable(cause) => format!("{error}: {cause}"),
        other => other.to_string(),
    }
}
