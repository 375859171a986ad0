//! The ingress's shared state: what every handler reads (pool, secrets, clock, body limit,
//! the wake-up coalescer, the group-commit writer) and its database deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use jobs::notify::Coalescer;
use sqlx::PgPool;

use crate::error::ApiError;
use crate::inbox_writer::InboxWriter;
use crate::settings::{Settings, WebhookSecrets};
use crate::signature::Clock;

struct Inner {
    pool: PgPool,
    secrets: WebhookSecrets,
    clock: Clock,
    body_limit: usize,
    public_url: String,
    db_timeout: Duration,
    coalescer: Arc<Coalescer>,
    writer: InboxWriter,
}

/// What every handler shares: the pool, the secrets, the clock and the wake-up
/// coalescer of the queues stored deliveries enqueue on.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("secrets", &self.0.secrets)
            .field("body_limit", &self.0.body_limit)
            .field("public_url", &self.0.public_url)
            .field("coalescer", &self.0.coalescer)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State on `pool` with the system clock. Starts the wake-up [`Coalescer`], so it needs a
    /// Tokio runtime; the coalescer stops once the last clone of the state is dropped.
    pub fn new(pool: PgPool, settings: &Settings) -> Self {
        Self::with_clock(pool, settings, Clock::system())
    }

    /// State on `pool` whose timestamp checks read `clock` (tests pin it).
    pub fn with_clock(pool: PgPool, settings: &Settings, clock: Clock) -> Self {
        AppState(Arc::new(Inner {
            coalescer: Coalescer::spawn(pool.clone(), settings.notify_every),
            writer: InboxWriter::spawn(pool.clone()),
            pool,
            secrets: settings.webhook_secrets.clone(),
            clock,
            body_limit: settings.body_limit,
            public_url: settings.public_url.trim_end_matches('/').to_owned(),
            db_timeout: settings.db_timeout,
        }))
    }

    /// The database pool.
    pub fn pool(&self) -> &PgPool {
        &self.0.pool
    }

    /// Wakes the workers of the queues that stored deliveries enqueue on (the inbox statement
    /// sends no NOTIFY of its own; DESIGN.md §3, notify sparingly).
    pub fn coalescer(&self) -> &Coalescer {
        &self.0.coalescer
    }

    /// The group-commit writer webhook deliveries are stored through.
    pub fn writer(&self) -> &InboxWriter {
        &self.0.writer
    }

    pub(crate) fn secrets(&self) -> &WebhookSecrets {
        &self.0.secrets
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.0.clock
    }

    /// The largest request body, in bytes.
    pub fn body_limit(&self) -> usize {
        self.0.body_limit
    }

    /// The status URL of saga `id`.
    pub fn status_url(&self, id: i64) -> String {
        format!("{}/v1/onboarding/{id}", self.0.public_url)
    }

    /// Reads a body whole. The public router's `RequestBodyLimitLayer` answers `413` up front
    /// for a declared length over the limit and cuts an undeclared one off at it (`413` here).
    pub(crate) async fn read_body(&self, body: Body) -> Result<axum::body::Bytes, ApiError> {
        let limit = self.0.body_limit;
        axum::body::to_bytes(body, usize::MAX).await.map_err(|e| {
            let inner = e.into_inner();
            // The limit's error is wrapped once per body adapter: look down the chain.
            let over_limit = std::iter::successors(
                Some(inner.as_ref() as &(dyn std::error::Error + 'static)),
                |e| e.source(),
            )
            .any(|e| e.is::<http_body_util::LengthLimitError>());
            if over_limit {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::BadBody
            }
        })
    }

    /// How long a request waits for the database before answering `503`.
    pub(crate) fn db_timeout(&self) -> Duration {
        self.0.db_timeout
    }

    /// Runs database work with the request's deadline: `503` when it does not finish in time
    /// (an attempt whose outcome is unknown is never answered 2xx).
    pub(crate) async fn db<T>(
        &self,
        work: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.0.db_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::Unavailable(anyhow::anyhow!(
                "the database did not answer within {:?}",
                self.0.db_timeout
            ))),
        }
    }
}
