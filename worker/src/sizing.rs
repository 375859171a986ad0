//! Fitting the worker's concurrency to its connection pool, so a burst never turns into
//! attempts that fail waiting for a connection: every handler holds at most one connection,
//! so the jobs in flight plus the queue machinery's own connections must fit in the pool.

use jobs::QueueConfig;

/// Connections the maintenance services hold at most.
const MAINTENANCE_CONNECTIONS: u32 = 1;

/// Connections the worker may hold at once with these queues.
pub fn connections_needed(queues: &[QueueConfig]) -> u32 {
    queues.iter().map(QueueConfig::connections).sum::<u32>() + MAINTENANCE_CONNECTIONS
}

/// Lowers the queues' jobs in flight (max-min fair shares, at least one each) until the worker
/// needs no more than `pool_size` connections; queues that fit are returned unchanged.
pub fn fit_to_pool(mut queues: Vec<QueueConfig>, pool_size: u32) -> Vec<QueueConfig> {
    let needed = connections_needed(&queues);
    if needed <= pool_size {
        return queues;
    }
    let handlers = |queues: &[QueueConfig]| -> u32 {
        queues
            .iter()
            .map(|q| u32::try_from(q.max_in_flight.max(1)).unwrap_or(u32::MAX))
            .sum()
    };
    let wanted = handlers(&queues);
    let machinery = needed - wanted;
    let mut budget = pool_size.saturating_sub(machinery);
    // Max-min fair shares: small queues keep what they asked for, the largest give way.
    let mut order: Vec<usize> = (0..queues.len()).collect();
    order.sort_by_key(|&i| queues[i].max_in_flight);
    let mut left = u32::try_from(queues.len()).unwrap_or(u32::MAX);
    for i in order {
        let queue = &mut queues[i];
        let want = u32::try_from(queue.max_in_flight.max(1)).unwrap_or(u32::MAX);
        let share = want.min(budget / left.max(1)).max(1);
        budget = budget.saturating_sub(share);
        left -= 1;
        queue.max_in_flight = share as usize;
        queue.batch_size = queue.batch_size.min(queue.max_in_flight);
    }
    let fitted = connections_needed(&queues);
    if fitted > pool_size {
        tracing::warn!(
            pool_size,
            needed = fitted,
            "the connection pool is too small for one job in flight per queue; raise it"
        );
    } else {
        tracing::info!(
            pool_size,
            before = wanted,
            after = handlers(&queues),
            "jobs in flight lowered to fit the connection pool"
        );
    }
    queues
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn service_queues() -> Vec<QueueConfig> {
        let pool = sqlx::PgPool::connect_lazy("postgres://localhost/unused").unwrap();
        let providers = crate::app::ProviderSettings::on_one_host(
            "http://127.0.0.1:9",
            "AC0",
            "token",
            "re_key",
            "sk_key",
            Duration::from_secs(1),
        )
        .unwrap()
        .providers()
        .unwrap();
        crate::app::registry(pool, providers).queues().to_vec()
    }

    #[tokio::test]
    async fn the_service_never_needs_more_connections_than_its_pool() {
        let pool_size = jobs::db::PoolSettings::default().max_connections;
        let queues = fit_to_pool(service_queues(), pool_size);
        assert!(
            connections_needed(&queues) <= pool_size,
            "{} connections needed, {pool_size} in the pool",
            connections_needed(&queues)
        );
        assert!(queues.iter().all(|q| q.max_in_flight >= 1));
    }

    #[test]
    fn queues_that_fit_are_left_alone_and_the_largest_gives_way() {
        let mut big = QueueConfig::new("big");
        big.max_in_flight = 200;
        let mut small = QueueConfig::new("small");
        small.max_in_flight = 8;
        let fits = fit_to_pool(vec![small.clone()], 100);
        assert_eq!(fits[0].max_in_flight, 8);
        let fitted = fit_to_pool(vec![big, small], 40);
        assert!(connections_needed(&fitted) <= 40);
        assert_eq!(
            fitted[1].max_in_flight, 8,
            "the small queue keeps its share"
        );
        assert!(fitted[0].max_in_flight > 8);
    }
}
