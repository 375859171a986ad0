//! The whole service for end-to-end tests: a fresh database, the provider sandbox, the ingress
//! on a free port and the worker (every job kind, maintenance every 100 ms).

use std::time::Duration;

use serde_json::{Value, json};

use crate::{TestDb, fresh_db, wait_for};

/// The webhook secret the test stack verifies with.
pub const SECRET: &str = "whsec_dGVzdC1vbmx5LW9uYm9hcmQtd2ViaG9vay1zZWNyZXQ=";

/// A running stack.
pub struct Stack {
    /// Its database.
    pub db: TestDb,
    /// The provider emulator, with its ledger.
    pub sandbox: sandbox::Sandbox,
    /// The ingress.
    pub ingress: ingress::startup::Running,
    options: StackOptions,
    worker_stop: Option<tokio::sync::oneshot::Sender<()>>,
    worker: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// How a test wants the stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The sandbox's delay for `-slow-twilio` answers.
    pub slow_delay: Duration,
    /// The provider clients' timeout.
    pub client_timeout: Duration,
    /// Start the in-process worker.
    pub worker: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            slow_delay: Duration::from_secs(3),
            client_timeout: Duration::from_millis(700),
            worker: true,
        }
    }
}

/// Provider settings pointing at the sandbox.
pub fn provider_settings(sandbox_url: &str, timeout: Duration) -> worker::app::ProviderSettings {
    let dev = sandbox::SandboxConfig::default();
    worker::app::ProviderSettings::on_one_host(
        sandbox_url,
        &dev.twilio_account_sid,
        &dev.twilio_auth_token,
        &dev.resend_api_key,
        &dev.clerk_secret_key,
        timeout,
    )
    .expect("sandbox provider settings")
}

/// The sandbox's org directory over `pool` (as `onboard dev` wires it): slug magic from the
/// webhook alone.
pub fn slug_lookup(pool: sqlx::PgPool) -> sandbox::SlugLookup {
    std::sync::Arc::new(move |org_id: String| {
        let pool = pool.clone();
        Box::pin(async move {
            onboarding::directory::organization_slug(&pool, &org_id)
                .await
                .ok()
                .flatten()
        })
    })
}

/// Runs the worker with every job kind against `pool` until `stop` fires.
pub fn spawn_worker_runtime(
    pool: sqlx::PgPool,
    providers: worker::saga::Providers,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut settings = worker::runtime::WorkerSettings::default();
    settings.maintenance.every = Duration::from_millis(100);
    settings.shutdown_deadline = Duration::from_secs(10);
    let registry = worker::app::registry(pool.clone(), providers);
    let handle = tokio::spawn(async move {
        worker::app::configure_queues(&pool).await?;
        worker::runtime::run(pool, registry, settings, async move {
            let _ = stopped.await;
        })
        .await
    });
    (stop, handle)
}

impl Stack {
    /// Starts everything.
    pub async fn start(options: StackOptions) -> Stack {
        let db = fresh_db().await;
        let config = sandbox::SandboxConfig {
            slow_delay: options.slow_delay,
            slug_lookup: Some(slug_lookup(db.pool.clone())),
            ..Default::default()
        };
        let sandbox = sandbox::spawn("127.0.0.1:0".parse().unwrap(), config)
            .await
            .expect("sandbox");
        let secrets =
            ingress::settings::WebhookSecrets::parse(&SECRET.to_owned().into()).expect("secret");
        let mut settings = ingress::settings::Settings::new(secrets);
        settings.ingress_addr = "127.0.0.1:0".parse().unwrap();
        settings.dashboard_addr = None;
        let ingress = ingress::startup::spawn(db.pool.clone(), &settings)
            .await
            .expect("ingress");
        let start_worker = options.worker;
        let mut stack = Stack {
            db,
            sandbox,
            ingress,
            options,
            worker_stop: None,
            worker: None,
        };
        if start_worker {
            stack.start_worker();
        }
        stack
    }

    /// Starts the in-process worker (for stacks made without one); [`Stack::stop`] stops it.
    pub fn start_worker(&mut self) {
        let providers = provider_settings(&self.sandbox.base_url(), self.options.client_timeout)
            .providers()
            .unwrap();
        let (stop, handle) = spawn_worker_runtime(self.db.pool.clone(), providers);
        self.worker_stop = Some(stop);
        self.worker = Some(handle);
    }

    /// Starts the saga of the stored `organization.created` delivery now, deterministically,
    /// as its `clerk.organization.created` job would.
    pub async fn start_saga_now(&self) -> onboarding::start::Started {
        let inbox_id: i64 = sqlx::query_scalar(
            "select id from onboard.inbox where event_type = 'organization.created' order by id desc limit 1",
        )
        .fetch_one(&self.db.pool)
        .await
        .unwrap();
        let mut tx = self.db.pool.begin().await.unwrap();
        let started = onboarding::start::start_from_inbox(&mut tx, inbox_id)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        started
    }

    /// Stops the worker and the ingress.
    pub async fn stop(mut self) {
        if let Some(stop) = self.worker_stop.take() {
            let _ = stop.send(());
        }
        if let Some(worker) = self.worker.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
        }
        let _ = self.ingress.shutdown().await;
    }

    /// Signs and POSTs a Clerk event to the webhook; returns the status.
    pub async fn deliver(&self, event: &Value) -> u16 {
        let url = format!("http://{}/webhooks/clerk", self.ingress.ingress_addr);
        let body = serde_json::to_vec(event).unwrap();
        let (status, body) = ingress::send::send_event(&url, SECRET, &body, None, None)
            .await
            .expect("deliver");
        assert!(status < 300, "delivery answered {status}: {body}");
        status
    }

    /// Delivers a new organization as Clerk does: its creator's `user.created` (with `email`),
    /// then its `organization.created` with `slug`.
    pub async fn deliver_new_org(&self, org_id: &str, slug: &str, user_id: &str, email: &str) {
        self.deliver(&user_created(user_id, email)).await;
        self.deliver(&organization_created(org_id, slug, user_id))
            .await;
    }

    /// The saga state of an organization, once it has a saga.
    pub async fn saga_state(&self, org_id: &str) -> Option<String> {
        sqlx::query_scalar("select state from onboard.onboarding where clerk_org_id = $1")
            .bind(org_id)
            .fetch_optional(&self.db.pool)
            .await
            .unwrap()
    }

    /// Waits until the organization's saga is in `state`.
    pub async fn wait_saga(&self, org_id: &str, state: &str) {
        wait_for(
            &format!("saga of {org_id} to be {state}"),
            Duration::from_secs(90),
            || async { (self.saga_state(org_id).await.as_deref() == Some(state)).then_some(()) },
        )
        .await;
    }

    /// Waits until no job is waiting or running (everything the saga started has settled).
    pub async fn wait_idle(&self) {
        wait_for("the queue to settle", Duration::from_secs(90), || async {
            let busy: i64 = sqlx::query_scalar(
                "select count(*) from onboard.job where state in ('available', 'running')
                    or (state in ('scheduled', 'retryable') and run_at < now() + interval '5 seconds')",
            )
            .fetch_one(&self.db.pool)
            .await
            .unwrap();
            (busy == 0).then_some(())
        })
        .await;
    }

    /// Ledger effects of `action` for `key`, as `(status, id)`.
    pub async fn effects(&self, action: &str, key: &str) -> Vec<(u16, Option<String>)> {
        self.sandbox
            .ledger()
            .await
            .into_iter()
            .filter_map(|e| {
                let v = serde_json::to_value(&e).unwrap();
                (v["action"] == action && v["key"] == key).then(|| (e.status, e.id.clone()))
            })
            .collect()
    }
}

/// A Clerk fixture, parsed.
pub fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/clerk")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture json")
}

/// `organization.created` for a fresh org with `slug`, created by `user_id`.
pub fn organization_created(org_id: &str, slug: &str, user_id: &str) -> Value {
    let mut event = fixture("organization.created.json");
    event["data"]["id"] = json!(org_id);
    event["data"]["slug"] = json!(slug);
    event["data"]["name"] = json!(format!("Org {slug}"));
    event["data"]["created_by"] = json!(user_id);
    event
}

/// `user.created` for `user_id` with a primary email.
pub fn user_created(user_id: &str, email: &str) -> Value {
    let mut event = fixture("user.created.json");
    event["data"]["id"] = json!(user_id);
    event["data"]["primary_email_address_id"] = json!("idn_primary");
    event["data"]["email_addresses"] = json!([{
        "id": "idn_primary", "object": "email_address", "email_address": email,
        "verification": {"status": "verified", "strategy": "email_code"}, "linked_to": []
    }]);
    event
}

/// `organization.deleted` for `org_id`.
pub fn organization_deleted(org_id: &str) -> Value {
    let mut event = fixture("organization.deleted.json");
    event["data"]["id"] = json!(org_id);
    event
}
