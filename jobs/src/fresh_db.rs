//! Fresh migrated databases on a throwaway cluster, one per test: each is a copy of a template
//! database migrated once (a copy takes milliseconds, migrating takes far longer).

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use tokio::sync::OnceCell;

use crate::local_pg::LocalPostgres;

/// Makes migrated databases on `cluster`, copied from the template `template`.
#[derive(Debug)]
pub struct FreshDatabases {
    cluster: LocalPostgres,
    template: &'static str,
    migrated: OnceCell<()>,
    next: AtomicU32,
}

impl FreshDatabases {
    /// Databases on `cluster`; the template is made on the first [`FreshDatabases::create`].
    pub fn new(cluster: LocalPostgres, template: &'static str) -> Self {
        FreshDatabases {
            cluster,
            template,
            migrated: OnceCell::new(),
            next: AtomicU32::new(0),
        }
    }

    /// The cluster.
    pub fn cluster(&self) -> &LocalPostgres {
        &self.cluster
    }

    /// Creates a database named `<prefix>_<pid>_<n>`, migrated unless `migrated` is false;
    /// returns its URL.
    pub async fn create(&self, prefix: &str, migrated: bool) -> anyhow::Result<String> {
        let template = if migrated {
            self.migrated
                .get_or_try_init(|| self.make_template())
                .await?;
            format!(" template {}", self.template)
        } else {
            String::new()
        };
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            self.next.fetch_add(1, Ordering::SeqCst)
        );
        self.admin(&format!("create database {name}{template}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        Ok(self.cluster.url(&name))
    }

    async fn make_template(&self) -> anyhow::Result<()> {
        self.admin(&format!("create database {}", self.template))
            .await
            .context("creating the template database")?;
        let mut conn = PgConnection::connect(&self.cluster.url(self.template)).await?;
        crate::db::migrator()
            .run(&mut conn)
            .await
            .context("migrating the template database")?;
        conn.close().await?;
        Ok(())
    }

    async fn admin(&self, statement: &str) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect(&self.cluster.url("postgres")).await?;
        sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        Ok(())
    }
}
