//! The worker's part of the internal listener: no pages of its own yet; ready when the
//! database answers. Its series are the queue's (`jobs::metrics`) and the providers'
//! ([`crate::provider::metrics`]).

use std::time::Duration;

use axum::Router;
use sqlx::PgPool;

/// How long the readiness check waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The worker's [`telemetry::Role`] on `pool`.
pub fn internal_role(pool: PgPool) -> telemetry::Role {
    telemetry::Role::new("worker", Router::new(), move || {
        let pool = pool.clone();
        async move {
            match tokio::time::timeout(READY_TIMEOUT, sqlx::query("select 1").execute(&pool)).await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(format!("the database is not reachable: {error}")),
                Err(_) => Err(format!(
                    "the database did not answer within {READY_TIMEOUT:?}"
                )),
            }
        }
    })
}
