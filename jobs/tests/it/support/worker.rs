//! An apalis worker on our backend inside the test process, run by a `Monitor`.

use std::future::Future;
use std::time::Duration;

use apalis_core::monitor::Monitor;
use apalis_core::worker::builder::WorkerBuilder;
use sqlx::PgPool;

/// A running worker; aborted on drop.
pub struct RunningWorker {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    /// Shuts down gracefully (stop fetching, finish in-flight, release the rest) and waits.
    pub async fn shutdown(mut self) {
        self.signal();
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.handle).await;
    }

    /// Sends the shutdown signal without waiting.
    pub fn signal(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the monitor to return (after [`RunningWorker::signal`]).
    pub async fn stopped(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.handle).await;
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Starts a worker for `config.queue` running `handler` on every job.
pub fn spawn_worker<F, Fut>(pool: PgPool, config: jobs::QueueConfig, handler: F) -> RunningWorker
where
    F: Fn(jobs::AnyJob, jobs::JobContext) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), jobs::JobError>> + Send + 'static,
{
    let name = format!("test-{}", config.queue);
    let monitor = Monitor::new()
        .should_restart(|_, _| true)
        .shutdown_timeout(Duration::from_secs(20))
        .register(move |_| {
            WorkerBuilder::new(name.clone())
                .backend(jobs::PgBackend::<jobs::AnyJob>::new(
                    pool.clone(),
                    config.clone(),
                ))
                .build(handler.clone())
        });
    run_monitor(monitor)
}

/// Runs `monitor` in a background task until [`RunningWorker::shutdown`].
pub fn run_monitor(monitor: Monitor) -> RunningWorker {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let _ = monitor
            .run_with_signal(async move {
                let _ = stopped.await;
                Ok(())
            })
            .await;
    });
    RunningWorker {
        stop: Some(stop),
        handle,
    }
}
