//! The worker as deployed: the registry of every job kind this service runs and the queue
//! caps the providers need. Its settings are in [`crate::settings`].

use std::sync::Arc;

use sqlx::PgPool;

use crate::runtime::Registry;
use crate::saga::Providers;
use onboarding::retention::DataRetention;

pub use crate::settings::ProviderSettings;

/// Every job kind of the service: the onboarding saga, the Clerk event handlers and the
/// periodic retention job (windows from `ONBOARD_RETENTION_*`; an invalid value is logged and
/// the defaults are used, see [`DataRetention::from_env`]).
pub fn registry(pool: PgPool, providers: Providers) -> Registry {
    let retention = DataRetention::from_env().unwrap_or_else(|error| {
        tracing::error!(%error, "invalid retention settings: using the defaults");
        DataRetention::default()
    });
    registry_with(pool, providers, retention)
}

/// [`registry`] with explicit retention windows.
pub fn registry_with(pool: PgPool, providers: Providers, retention: DataRetention) -> Registry {
    // The saga registers last: its `clerk.organization.created` handler (start the saga) is
    // the one that must win over the directory's handler of the same kind.
    let registry = crate::handlers::clerk::register(Registry::default(), pool.clone());
    let registry = crate::handlers::retention::register(registry, pool.clone(), retention);
    crate::saga::register(registry, pool, Arc::new(providers))
}

/// Sets the per-queue caps the providers need (Resend allows 2 requests/s per team), unless
/// an operator has set that queue's caps: theirs survive restarts. Waits out a database that
/// goes away meanwhile ([`jobs::db::retry_while_unavailable`]).
pub async fn configure_queues(pool: &PgPool) -> Result<(), sqlx::Error> {
    jobs::db::retry_while_unavailable("configuring the queues", || {
        jobs::admin::set_default_limits(pool, onboarding::saga::EMAIL_QUEUE, None, Some(2.0))
    })
    .await
}
