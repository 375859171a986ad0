//! One `onboard` process: the roles it runs (ingress, worker) on one database pool, behind one
//! internal listener that merges the roles' routers. The internal listener comes up first;
//! the roles start once the database answers and is migrated (retried with backoff, one log
//! line per try), so a process started before PostgreSQL comes up when it is back.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use axum::Router;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::settings::Database;

/// The worker role's settings.
#[derive(Debug, Clone)]
pub struct WorkerRole {
    /// Where the providers are.
    pub providers: worker::app::ProviderSettings,
    /// How the worker runs.
    pub settings: worker::runtime::WorkerSettings,
    /// How long the inbox, rejected deliveries and idempotency records are kept.
    pub retention: onboarding::retention::DataRetention,
}

/// The roles a process runs.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    /// The public ingress (its `dashboard_addr` is ignored: the process serves one).
    pub ingress: Option<ingress::Settings>,
    /// The job workers.
    pub worker: Option<WorkerRole>,
    /// The operator dashboard and its admin API, on the internal listener.
    pub dashboard: Option<dashboard::Settings>,
}

/// A process with its listeners bound, not yet serving (bind port 0 in tests).
pub struct Process {
    pool: PgPool,
    worker_pool: PgPool,
    internal: TcpListener,
    internal_router: Router,
    database_ready: Arc<AtomicBool>,
    ingress: Option<ingress::Application>,
    worker: Option<WorkerRole>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("internal", &self.internal_addr())
            .field("ingress", &self.ingress)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

impl Process {
    /// Binds the internal listener on `internal_addr` and the roles' own listeners. Needs no
    /// database: the pool connects on first use.
    pub async fn bind(
        database: &Database,
        internal_addr: SocketAddr,
        roles: Roles,
    ) -> anyhow::Result<Self> {
        let pool = database.connect_lazy()?;
        let database_ready = Arc::new(AtomicBool::new(false));
        let gate = database_ready.clone();
        let mut parts = vec![telemetry::Role::new("database", Router::new(), move || {
            let ready = gate.load(Ordering::Acquire);
            async move {
                if ready {
                    Ok(())
                } else {
                    Err("waiting for the database to answer and be migrated".to_owned())
                }
            }
        })];
        let ingress = match roles.ingress {
            Some(mut settings) => {
                settings.dashboard_addr = None;
                let state = ingress::AppState::new(pool.clone(), &settings);
                parts.push(ingress::internal_role(state.clone()));
                Some(ingress::Application::bind(state, &settings).await?)
            }
            None => None,
        };
        // The worker fits its jobs in flight to its pool, and plans its statements once per
        // connection: it gets a pool of its own, so the other roles' requests never wait
        // behind its handlers and keep their per-call plans.
        let worker_pool = if roles.worker.is_some() {
            database.connect_lazy_for_worker()?
        } else {
            pool.clone()
        };
        if roles.worker.is_some() {
            parts.push(worker::internal::internal_role(worker_pool.clone()));
        }
        if let Some(settings) = roles.dashboard {
            let state = dashboard::DashboardState::new(pool.clone(), settings);
            parts.push(telemetry::Role::new(
                "dashboard",
                dashboard::router(state),
                || async { Ok(()) },
            ));
        }
        let internal = TcpListener::bind(internal_addr)
            .await
            .with_context(|| format!("binding the internal listener on {internal_addr}"))?;
        Ok(Process {
            pool,
            worker_pool,
            internal,
            internal_router: telemetry::router(parts),
            database_ready,
            ingress,
            worker: roles.worker,
        })
    }

    /// The internal listener's address.
    pub fn internal_addr(&self) -> SocketAddr {
        self.internal
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The public ingress listener's address, when the process runs the ingress.
    pub fn ingress_addr(&self) -> Option<SocketAddr> {
        self.ingress
            .as_ref()
            .map(ingress::Application::ingress_addr)
    }

    /// Serves until `shutdown` resolves: the internal listener at once, the roles once the
    /// database is ready. Then stops the roles gracefully and the internal listener last.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let until = move |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown.await;
                let _ = stop.send(true);
            }
        });
        tracing::info!(internal = %self.internal_addr(), ingress = ?self.ingress_addr(), "listening");
        let (internal_stop, internal_stopped) = watch::channel(false);
        let internal = tokio::spawn(telemetry::serve(
            self.internal,
            self.internal_router,
            until(internal_stopped),
        ));

        let ready = tokio::select! {
            () = jobs::db::wait_until_ready(&self.pool) => true,
            () = until(stopped.clone()) => false,
        };
        let mut result = Ok(());
        if ready {
            self.database_ready.store(true, Ordering::Release);
            // A role that ends (an error, or a monitor that gave up) ends the process.
            let ingress = async {
                let Some(app) = self.ingress else {
                    return Ok(());
                };
                let result = app.run_until(until(stopped.clone())).await;
                let _ = stop.send(true);
                result
            };
            let worker = async {
                let Some(role) = self.worker else {
                    return Ok(());
                };
                let result =
                    run_worker(self.worker_pool.clone(), role, until(stopped.clone())).await;
                let _ = stop.send(true);
                result
            };
            let (ingress, worker) = tokio::join!(ingress, worker);
            result = ingress.context("ingress").and(worker.context("worker"));
        }
        let _ = internal_stop.send(true);
        internal
            .await
            .context("the internal listener panicked")?
            .context("internal listener")?;
        result
    }
}

async fn run_worker(
    pool: PgPool,
    role: WorkerRole,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let providers = role.providers.providers()?;
    // Configuring waits out a database that is down; a shutdown meanwhile ends it.
    let mut shutdown = Box::pin(shutdown);
    tokio::select! {
        configured = worker::app::configure_queues(&pool) => configured.context("configuring the queues")?,
        () = &mut shutdown => return Ok(()),
    }
    let registry = worker::app::registry_with(pool.clone(), providers, role.retention);
    worker::runtime::run(pool, registry, role.settings, shutdown).await
}
