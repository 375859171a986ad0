//! The settings shared by every role of a process, read by `clap` from flags or their
//! environment variables (the flag wins) and validated at start: the database, the internal
//! listener and the log format. Each role's own flags live in its crate
//! (`ingress::settings::Args`, `worker::settings::Args`).

use std::net::SocketAddr;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

/// The database flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "database")]
#[command(next_help_heading = "Database")]
pub struct DatabaseArgs {
    /// The PostgreSQL URL (`onboard dev` starts its own PostgreSQL when it is unset).
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<SecretString>,
    /// Connections in this process's pool at most.
    #[arg(
        long,
        env = "ONBOARD_DB_MAX_CONNECTIONS",
        value_name = "ONBOARD_DB_MAX_CONNECTIONS",
        default_value_t = 40
    )]
    pub db_max_connections: u32,
}

/// The database, validated. The URL may hold a password: it is never in `Debug` output.
#[derive(Debug, Clone)]
pub struct Database {
    url: SecretString,
    pool: jobs::db::PoolSettings,
}

impl DatabaseArgs {
    /// Validates the values: the URL is required and must be a PostgreSQL URL.
    pub fn settings(&self) -> anyhow::Result<Database> {
        let url = self.database_url.clone().context(
            "DATABASE_URL is not set (or use `onboard dev`, which starts its own PostgreSQL)",
        )?;
        let text = url.expose_secret();
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            anyhow::bail!("DATABASE_URL must start with postgres:// or postgresql://");
        }
        text.parse::<PgConnectOptions>()
            .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a PostgreSQL URL: {e}"))?;
        if self.db_max_connections == 0 {
            anyhow::bail!("ONBOARD_DB_MAX_CONNECTIONS must be at least 1");
        }
        let pool = jobs::db::PoolSettings {
            max_connections: self.db_max_connections,
            ..jobs::db::PoolSettings::default()
        };
        Ok(Database { url, pool })
    }
}

impl Database {
    /// The database at `url` with the default pool.
    pub fn new(url: &str) -> Self {
        Database {
            url: SecretString::from(url),
            pool: jobs::db::PoolSettings::default(),
        }
    }

    /// A pool that connects on first use (a role starts before its database).
    pub fn connect_lazy(&self) -> anyhow::Result<PgPool> {
        jobs::db::connect_lazy(self.url.expose_secret(), &self.pool)
            .context("DATABASE_URL cannot be used")
    }

    /// A lazy pool for the worker role: its statements are planned once per connection
    /// ([`jobs::db::PoolSettings::generic_plans`]).
    pub fn connect_lazy_for_worker(&self) -> anyhow::Result<PgPool> {
        let settings = jobs::db::PoolSettings {
            generic_plans: true,
            ..self.pool.clone()
        };
        jobs::db::connect_lazy(self.url.expose_secret(), &settings)
            .context("DATABASE_URL cannot be used")
    }

    /// A pool, checked to answer now (one-shot commands: `migrate`, `api-key`).
    pub async fn connect(&self) -> anyhow::Result<PgPool> {
        jobs::db::connect(self.url.expose_secret(), &self.pool)
            .await
            .context("connecting to DATABASE_URL")
    }
}

/// The internal listener's flags.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "internal")]
#[command(next_help_heading = "Internal listener")]
pub struct InternalArgs {
    /// The internal listener: `/healthz`, `/readyz`, `/metrics` of every role this process runs.
    #[arg(
        long,
        env = "ONBOARD_DASHBOARD_ADDR",
        value_name = "ONBOARD_DASHBOARD_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub dashboard_addr: SocketAddr,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (production).
    Json,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        database: DatabaseArgs,
    }

    #[test]
    fn the_database_url_is_required_validated_and_never_shown() {
        let unset = DatabaseArgs {
            database_url: None,
            db_max_connections: 20,
        };
        let error = unset.settings().unwrap_err();
        assert!(error.to_string().contains("DATABASE_URL"), "{error}");
        let cli = Cli::try_parse_from(["x", "--database-url", "mysql://u:hunter2@h/db"]).unwrap();
        let error = format!("{:#}", cli.database.settings().unwrap_err());
        assert!(
            error.contains("DATABASE_URL") && !error.contains("hunter2"),
            "{error}"
        );
        let cli =
            Cli::try_parse_from(["x", "--database-url", "postgres://u:hunter2@h/db"]).unwrap();
        let database = cli.database.settings().unwrap();
        for debug in [format!("{database:?}"), format!("{cli:?}")] {
            assert!(!debug.contains("hunter2"), "{debug}");
        }
    }
}
