//! The `maintenance` queue: the periodic [`onboarding::retention::KIND`] job, which drops inbox
//! payloads and deletes old inbox rows, rejected deliveries and API idempotency records
//! ([`DataRetention`]). The maintenance scheduler enqueues one job per tick across replicas;
//! the round's advisory lock keeps two rounds from overlapping.

use std::time::Duration;

use jobs::maintenance::PeriodicJob;
use jobs::{JobContext, JobError, KindOptions, Kinds, NewJob, QueueConfig};
use onboarding::retention::{self, DataRetention};
use sqlx::PgPool;

use crate::runtime::Registry;

/// One round's time limit (its lease is twice this).
pub const TIMEOUT: Duration = Duration::from_secs(600);

/// Serves the `maintenance` queue with the retention handler and schedules it every
/// `settings.every`.
pub fn register(registry: Registry, pool: PgPool, settings: DataRetention) -> Registry {
    let options = KindOptions {
        queue: retention::QUEUE.to_owned(),
        max_attempts: 3,
        timeout: TIMEOUT,
        ..KindOptions::default()
    };
    let mut queue = QueueConfig::new(retention::QUEUE)
        .kinds(Kinds::new(options.clone()).with(retention::KIND, options));
    queue.batch_size = 1;
    queue.max_in_flight = 1;
    let every = settings.every;
    registry
        .queue(queue)
        .handle(retention::KIND, move |_job, ctx: JobContext| {
            let (pool, settings) = (pool.clone(), settings.clone());
            async move { run(&pool, &settings, &ctx).await }
        })
        .periodic(PeriodicJob {
            name: retention::KIND.to_owned(),
            every,
            job: NewJob::new(retention::KIND, serde_json::json!({}))
                .queue(retention::QUEUE)
                .max_attempts(3),
        })
}

async fn run(pool: &PgPool, settings: &DataRetention, ctx: &JobContext) -> Result<(), JobError> {
    let report = settings.run_once(pool).await.map_err(JobError::retry)?;
    if report.payloads + report.inbox + report.rejected + report.idempotency > 0 {
        tracing::info!(
            job_id = ctx.id,
            payloads = report.payloads,
            inbox = report.inbox,
            rejected = report.rejected,
            idempotency = report.idempotency,
            "retention round"
        );
    }
    Ok(())
}
