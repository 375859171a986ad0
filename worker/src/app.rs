//! The worker as deployed: the registry of every job kind this service runs and the queue
//! caps the providers need. Its settings are in [`crate::settings`].

use std::sync::Arc;

use sqlx::PgPool;

use crate::runtime::Registry;
use crate::saga::Providers;

pub use crate::settings::ProviderSettings;

/// Every job kind of the service: the onboarding saga and the Clerk event handlers.
pub fn registry(pool: PgPool, providers: Providers) -> Registry {
    // The saga registers last: its `clerk.organization.created` handler (start the saga) is
    // the one that must win over the directory's handler of the same kind.
    let registry = crate::handlers::clerk::register(Registry::default(), pool.clone());
    crate::saga::register(registry, pool, Arc::new(providers))
}

/// Sets the per-queue caps the providers need (Resend allows 2 requests/s per team).
pub async fn configure_queues(pool: &PgPool) -> Result<(), sqlx::Error> {
    jobs::admin::set_limits(pool, onboarding::saga::EMAIL_QUEUE, None, Some(2.0)).await
}
