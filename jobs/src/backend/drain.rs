//! Graceful shutdown, from the signal on: fetching stops at once and every job claimed but not
//! yet started goes back to `available` with its claim's attempt undone, while the jobs already
//! running finish under their heartbeats.

use std::sync::Arc;
use std::time::Duration;

use apalis_core::worker::context::WorkerContext;

use super::{Shared, ack};

/// How often the worker's shutdown flag is looked at (apalis offers no future for it).
const LOOK_EVERY: Duration = Duration::from_millis(50);

/// Waits for the worker's shutdown signal (or the backend's close), then drains.
pub(crate) async fn watch(shared: Arc<Shared>, worker: WorkerContext) {
    let mut ticker = tokio::time::interval(LOOK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shared.draining.cancelled() => break,
        }
        if worker.is_shutting_down() {
            break;
        }
    }
    drain(&shared).await;
}

/// Stops the fetchers, waits for a claim in progress to land, and hands back every claimed job
/// no handler has started. Runs once; a second caller waits until the first is done.
pub(crate) async fn drain(shared: &Shared) {
    shared.drained.get_or_init(|| drain_once(shared)).await;
}

async fn drain_once(shared: &Shared) {
    shared.draining.cancel();
    let fetchers = std::mem::take(&mut *shared.fetchers.lock().expect("fetcher lock"));
    for fetcher in fetchers {
        let _ = fetcher.await;
    }
    let unstarted: Vec<(i64, i32)> = shared
        .unstarted
        .lock()
        .expect("unstarted lock")
        .drain()
        .collect();
    if !unstarted.is_empty() {
        tracing::info!(
            queue = %shared.config.queue,
            jobs = unstarted.len(),
            "shutting down: handing back claimed jobs that never started"
        );
    }
    ack::release(shared, &unstarted).await;
}
