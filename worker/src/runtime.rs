//! Builds the apalis `Monitor`: one worker per queue, each on its own [`jobs::PgBackend`], a
//! dispatcher that routes each job to its kind's handler, and the maintenance services.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apalis_core::monitor::Monitor;
use apalis_core::worker::builder::WorkerBuilder;
use futures::future::BoxFuture;
use jobs::maintenance::{Maintenance, PeriodicJob};
use jobs::{AnyJob, JobContext, JobError, PgBackend, QueueConfig};
use sqlx::PgPool;
use tokio::sync::watch;

/// A job kind's handler: gets the raw arguments and the attempt's context.
pub type Handler =
    Arc<dyn Fn(AnyJob, JobContext) -> BoxFuture<'static, Result<(), JobError>> + Send + Sync>;

/// Handlers by kind, the queues to serve and the periodic jobs to schedule.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Handler>,
    queues: Vec<QueueConfig>,
    periodic: Vec<PeriodicJob>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &self.handlers.keys().collect::<Vec<_>>())
            .field(
                "queues",
                &self.queues.iter().map(|q| &q.queue).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Registry {
    /// Serves `config.queue` with a worker.
    pub fn queue(mut self, config: QueueConfig) -> Self {
        self.queues.push(config);
        self
    }

    /// Enqueues `job` once per tick across all replicas (by the maintenance `Scheduler`).
    pub fn periodic(mut self, job: PeriodicJob) -> Self {
        self.periodic.push(job);
        self
    }

    /// The queues served, as configured.
    pub fn queues(&self) -> &[QueueConfig] {
        &self.queues
    }

    /// Runs jobs of `kind` with `handler`.
    pub fn handle<F, Fut>(mut self, kind: impl Into<String>, handler: F) -> Self
    where
        F: Fn(AnyJob, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        self.handlers.insert(
            kind.into(),
            Arc::new(move |job, ctx| Box::pin(handler(job, ctx))),
        );
        self
    }

    async fn dispatch(&self, job: AnyJob, ctx: JobContext) -> Result<(), JobError> {
        match self.handlers.get(&job.kind) {
            Some(handler) => handler(job, ctx).await,
            None => Err(JobError::permanent(format!(
                "no handler for job kind `{}`",
                job.kind
            ))),
        }
    }
}

/// How the worker process runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// How long a graceful shutdown waits for running jobs before leaving them to their leases.
    pub shutdown_deadline: Duration,
    /// Lease reaper, retention, periodic jobs.
    pub maintenance: Maintenance,
    /// Queue depth and age gauges (the registry's queues are always reported).
    pub sampler: jobs::sampler::QueueSampler,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            shutdown_deadline: Duration::from_secs(30),
            maintenance: Maintenance::default(),
            sampler: jobs::sampler::QueueSampler::default(),
        }
    }
}

/// Runs every queue's worker and the maintenance services until `shutdown` resolves, then shuts
/// down gracefully. A worker that stops on its own is restarted; if the monitor still ends
/// before `shutdown`, this returns an error so the process exits instead of idling workerless.
pub async fn run(
    pool: PgPool,
    registry: Registry,
    settings: WorkerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let registry = Arc::new(registry);
    let mut monitor = Monitor::new()
        .should_restart(|worker, error| {
            tracing::error!(worker = worker.name(), %error, "worker stopped; restarting it");
            true
        })
        .shutdown_timeout(settings.shutdown_deadline);
    let queues = crate::sizing::fit_to_pool(
        registry.queues.clone(),
        pool.options().get_max_connections(),
    );
    for config in queues {
        let (pool, registry) = (pool.clone(), registry.clone());
        monitor = monitor.register(move |_restarts| {
            let registry = registry.clone();
            WorkerBuilder::new(format!("queue-{}", config.queue))
                .backend(PgBackend::<AnyJob>::new(pool.clone(), config.clone()))
                .build(move |job: AnyJob, ctx: JobContext| {
                    let registry = registry.clone();
                    async move { registry.dispatch(job, ctx).await }
                })
        });
    }
    let maintenance = {
        let mut stop = stop_rx.clone();
        let mut maintenance = settings.maintenance.clone();
        maintenance
            .scheduler
            .jobs
            .extend(registry.periodic.iter().cloned());
        tokio::spawn(jobs::maintenance::run(
            pool.clone(),
            maintenance,
            async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            },
        ))
    };
    jobs::metrics::describe();
    crate::provider::metrics::describe();
    let sampler = {
        let mut stop = stop_rx.clone();
        let mut sampler = settings.sampler.clone();
        sampler
            .queues
            .extend(registry.queues.iter().map(|q| q.queue.clone()));
        tokio::spawn(sampler.run(pool.clone(), async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }))
    };
    let mut stop = stop_rx;
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
        Ok(())
    };
    let result = monitor.run_with_signal(signal).await;
    let _ = maintenance.await;
    let _ = sampler.await;
    if !*stop.borrow_and_update() {
        anyhow::bail!("the worker monitor ended before shutdown was requested: {result:?}");
    }
    result.map_err(|e| anyhow::anyhow!("worker shutdown: {e}"))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("install a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
