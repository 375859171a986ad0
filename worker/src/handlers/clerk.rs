//! The `clerk` queue: one handler per `clerk.<event type>` kind, each applying its stored event
//! with [`onboarding::clerk_event::handle_with`] in a transaction that also completes the job.

use jobs::{AnyJob, JobContext, JobError, QueueConfig};
use onboarding::clerk_event::{self, ClerkJobArgs};
use onboarding::directory::RoleMapping;
use sqlx::PgPool;

use crate::runtime::Registry;

/// Serves the `clerk` queue with a handler for every kind in [`clerk_event::KINDS`], mapping
/// Clerk roles with the defaults. (`clerk.organization.created`, on the same queue, is the
/// saga's handler: register it too.)
pub fn register(registry: Registry, pool: PgPool) -> Registry {
    register_with(registry, pool, RoleMapping::default())
}

/// [`register`] with a configured role mapping (see [`RoleMapping::from_env`]).
pub fn register_with(registry: Registry, pool: PgPool, roles: RoleMapping) -> Registry {
    let mut registry = registry.queue(QueueConfig::new(onboarding::inbox::QUEUE));
    for kind in clerk_event::KINDS {
        let (pool, roles) = (pool.clone(), roles.clone());
        registry = registry.handle(kind, move |job: AnyJob, ctx: JobContext| {
            let (pool, roles) = (pool.clone(), roles.clone());
            async move { apply(&pool, &roles, job, ctx).await }
        });
    }
    registry
}

/// Applies one event and completes its job in the same transaction.
async fn apply(
    pool: &PgPool,
    roles: &RoleMapping,
    job: AnyJob,
    ctx: JobContext,
) -> Result<(), JobError> {
    let args: ClerkJobArgs = serde_json::from_value(job.args)
        .map_err(|e| JobError::permanent(format!("undecodable `{}` arguments: {e}", job.kind)))?;
    let mut tx = pool.begin().await.map_err(JobError::retry)?;
    clerk_event::handle_with(&mut tx, &job.kind, args.inbox_id, roles)
        .await
        .map_err(|e| JobError::classified(&e, e.is_permanent()))?;
    // The event's effects and the job's completion commit together; if this attempt no longer
    // holds the job (fenced), roll back and let the holder apply it.
    if !jobs::complete(&mut tx, ctx.id, ctx.attempt)
        .await
        .map_err(JobError::retry)?
    {
        return Err(JobError::retry(format!(
            "attempt {} no longer holds job {}",
            ctx.attempt, ctx.id
        )));
    }
    tx.commit().await.map_err(JobError::retry)?;
    // Completed in that transaction: the runtime need not write the outcome again.
    ctx.settle();
    tracing::debug!(kind = %job.kind, inbox_id = args.inbox_id, svix_id = ?args.svix_id, "clerk event applied");
    Ok(())
}
