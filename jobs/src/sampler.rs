//! `QueueSampler`: every few seconds, one statement measures how many jobs are ready in each
//! queue and how long the oldest has waited, and sets the queue's gauges.

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::PgPool;

/// Ready jobs and the wait of the oldest, by queue. Served by the fetch index.
const SAMPLE: &str = "
select queue, count(*)::int8, coalesce(extract(epoch from now() - min(run_at)), 0)::float8
  from onboard.job
 where state in ('available', 'scheduled', 'retryable') and run_at <= now()
 group by queue";

/// Samples queue depth and age into [`crate::metrics`].
#[derive(Debug, Clone)]
pub struct QueueSampler {
    /// Time between samples.
    pub every: Duration,
    /// Queues always reported, at 0 when empty (others appear once they hold a job).
    pub queues: Vec<String>,
}

impl Default for QueueSampler {
    fn default() -> Self {
        QueueSampler {
            every: Duration::from_secs(5),
            queues: Vec::new(),
        }
    }
}

impl QueueSampler {
    /// Takes one sample; returns how many queues were reported. `seen` carries the queues
    /// reported before, so one that emptied is set back to 0.
    pub async fn run_once(
        &self,
        pool: &PgPool,
        seen: &mut BTreeSet<String>,
    ) -> Result<usize, sqlx::Error> {
        let rows: Vec<(String, i64, f64)> = sqlx::query_as(SAMPLE).fetch_all(pool).await?;
        seen.extend(self.queues.iter().cloned());
        let mut empty = seen.clone();
        for (queue, depth, oldest) in &rows {
            empty.remove(queue);
            crate::metrics::queue_sample(
                queue,
                u64::try_from(*depth).unwrap_or(0),
                Duration::try_from_secs_f64(*oldest).unwrap_or_default(),
            );
            seen.insert(queue.clone());
        }
        for queue in &empty {
            crate::metrics::queue_sample(queue, 0, Duration::ZERO);
        }
        Ok(seen.len())
    }

    /// Samples until `stop` resolves; a failed sample is logged and retried next time.
    pub async fn run(self, pool: PgPool, stop: impl std::future::Future<Output = ()>) {
        crate::metrics::describe();
        let mut seen = BTreeSet::new();
        let mut ticker = tokio::time::interval(self.every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = &mut stop => return,
            }
            if let Err(error) = self.run_once(&pool, &mut seen).await {
                tracing::debug!(%error, "sampling the queues failed; retrying next time");
            }
        }
    }
}
