//! Keeping claims alive and hearing the database: the heartbeat extends the leases of jobs in
//! flight and passes on cancellations; the listener turns NOTIFYs into immediate fetches.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::oneshot;

use super::Shared;

/// The channel enqueues notify, with the queue name as payload.
pub const JOB_CHANNEL: &str = "onboard_job";
/// The channel operators' cancellations notify, with the job id as payload.
pub const CANCEL_CHANNEL: &str = "onboard_cancel";

/// Extends leases every third of the lease, records the worker's heartbeat, and signals jobs
/// an operator asked to cancel.
pub(crate) async fn beat(shared: Arc<Shared>) {
    let every = (shared.config.effective_lease() / 3).max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shared.stop.cancelled() => return,
        }
        if let Err(error) = beat_once(&shared).await {
            tracing::warn!(%error, "heartbeat failed; retrying next tick");
        }
    }
}

async fn beat_once(shared: &Shared) -> Result<(), sqlx::Error> {
    let ids: Vec<i64> = shared
        .in_flight
        .lock()
        .expect("in-flight lock")
        .keys()
        .copied()
        .collect();
    if !ids.is_empty() {
        let cancelled: Vec<i64> = sqlx::query_scalar::<_, Option<i64>>(
            "update onboard.job set lease_expires_at = now() + $3 * interval '1 millisecond'
              where id = any($1) and state = 'running' and lease_owner = $2
          returning case when cancel_requested then id end",
        )
        .bind(&ids)
        .bind(&shared.owner)
        .bind(shared.lease_ms())
        .fetch_all(&shared.pool)
        .await?
        .into_iter()
        .flatten()
        .collect();
        signal_cancel(shared, &cancelled);
    }
    sqlx::query(
        "insert into onboard.worker (id, queue, hostname, pid) values ($1, $2, $3, $4)
         on conflict (id) do update set heartbeat_at = now()",
    )
    .bind(&shared.owner)
    .bind(&shared.config.queue)
    .bind(shared.owner.split(':').nth(1).unwrap_or_default())
    .bind(i32::try_from(std::process::id()).unwrap_or_default())
    .execute(&shared.pool)
    .await?;
    Ok(())
}

fn signal_cancel(shared: &Shared, ids: &[i64]) {
    let in_flight = shared.in_flight.lock().expect("in-flight lock");
    for id in ids {
        if let Some(cancellation) = in_flight.get(id) {
            cancellation.cancel();
        }
    }
}

/// LISTENs for enqueues on this queue and for cancellations. A lost connection counts as a
/// notification (one may have been missed), so the fetcher looks at once.
pub(crate) async fn listen(shared: Arc<Shared>, listening: oneshot::Sender<()>) {
    let mut listening = Some(listening);
    let mut failures = 0u32;
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        let mut listener = match connect(&shared).await {
            Ok(listener) => {
                failures = 0;
                listener
            }
            Err(error) => {
                failures += 1;
                let delay = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                tracing::warn!(%error, ?delay, "LISTEN failed; polling until it is back");
                tokio::select! {
                    () = tokio::time::sleep(delay) => continue,
                    () = shared.stop.cancelled() => return,
                }
            }
        };
        if let Some(ready) = listening.take() {
            let _ = ready.send(());
        }
        shared.wake.notify_one();
        loop {
            let received = tokio::select! {
                received = listener.try_recv() => received,
                () = shared.stop.cancelled() => return,
            };
            match received {
                Ok(Some(notification)) => match notification.channel() {
                    JOB_CHANNEL if notification.payload() == shared.config.queue => {
                        shared.wake.notify_one()
                    }
                    CANCEL_CHANNEL => {
                        if let Ok(id) = notification.payload().parse::<i64>() {
                            signal_cancel(&shared, &[id]);
                        }
                    }
                    _ => {}
                },
                // The connection dropped; it reconnects on the next call.
                Ok(None) => shared.wake.notify_one(),
                Err(error) => {
                    tracing::warn!(%error, "LISTEN connection failed");
                    shared.wake.notify_one();
                    break;
                }
            }
        }
    }
}

async fn connect(shared: &Shared) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(&shared.pool).await?;
    listener.listen_all([JOB_CHANNEL, CANCEL_CHANNEL]).await?;
    Ok(listener)
}
