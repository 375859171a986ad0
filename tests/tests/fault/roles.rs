//! The service as deployed: each role is a process of the real `onboard` CLI (`onboard sandbox`,
//! `onboard ingress`, `onboard worker` ×2, after `onboard migrate`), configured by environment
//! variables only, on free loopback ports, its output in a log file per start.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use jobs::local_pg::LocalPostgres;
use sqlx::PgPool;
use tokio::process::{Child, Command};

use crate::plan::Plan;

/// The `onboard` CLI, built by cargo from `onboard/src/main.rs` for this package.
const ONBOARD: &str = env!("CARGO_BIN_EXE_onboard-under-test");
/// The webhook signing secret the ingress is given.
pub const SECRET: &str = integration_tests::stack::SECRET;
/// How long a role may take to answer its health check.
const READY: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// One role's process, restartable.
#[derive(Debug)]
pub struct Role {
    /// For logs: `sandbox`, `ingress`, `worker-0`, …
    pub name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Role {
    fn new(name: &str, args: &[&str], env: Vec<(String, String)>, log_dir: &Path) -> Role {
        Role {
            name: name.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env,
            log_dir: log_dir.to_owned(),
            child: None,
            starts: 0,
        }
    }

    /// Starts the process (again); returns its pid.
    pub fn start(&mut self) -> u32 {
        self.starts += 1;
        let log = self
            .log_dir
            .join(format!("{}.{}.log", self.name, self.starts));
        let out = File::create(&log).expect("create a role log");
        let err = out.try_clone().expect("clone a log handle");
        let child = Command::new(ONBOARD)
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {ONBOARD} {:?}: {e}", self.args));
        let pid = child.id().expect("a started child has a pid");
        self.child = Some(child);
        pid
    }

    /// The running process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL (no shutdown, no release, no acknowledgement), and reaps it.
    pub async fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// The exit status if the process ended by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// SIGINT (graceful shutdown), then SIGKILL if it is still running after 30 s.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// The last lines of its latest log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self
            .log_dir
            .join(format!("{}.{}.log", self.name, self.starts));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The roles the supervisor kills and restarts: the two workers and the ingress.
#[derive(Debug)]
pub struct Supervised {
    /// The two workers.
    pub workers: Vec<Role>,
    /// The ingress (restarted if it dies, never killed on purpose).
    pub ingress: Role,
}

/// The whole service, running.
pub struct Stack {
    /// Where each role's output goes.
    pub log_dir: PathBuf,
    /// A small pool for the test's own queries.
    pub pool: PgPool,
    /// `http://127.0.0.1:<port>/webhooks/clerk`.
    pub ingress_url: String,
    /// `http://127.0.0.1:<port>`.
    pub sandbox_url: String,
    /// One client for the sandbox.
    pub http: reqwest::Client,
    sandbox: Role,
    supervised: Option<Supervised>,
}

async fn wait_healthy(http: &reqwest::Client, url: &str, role: &mut Role) {
    let deadline = tokio::time::Instant::now() + READY;
    loop {
        if let Ok(response) = http.get(url).send().await
            && response.status().is_success()
        {
            return;
        }
        if let Some(status) = role.exited() {
            panic!(
                "{} exited with {status} before it was healthy:\n{}",
                role.name,
                role.log_tail(30)
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} not healthy at {url} within {READY:?}:\n{}",
            role.name,
            role.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Stack {
    /// Creates the database on `pg`, migrates it with `onboard migrate`, then starts the
    /// sandbox, the ingress and two workers, each once healthy (workers: once started).
    pub async fn start(pg: &LocalPostgres) -> Stack {
        let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "fault-{}-{}",
            std::process::id(),
            chrono::Utc::now().format("%Y%m%dT%H%M%S")
        ));
        std::fs::create_dir_all(&log_dir).expect("create the log directory");
        let admin = sqlx::PgPool::connect(&pg.url("postgres"))
            .await
            .expect("connect to the cluster");
        sqlx::query("create database fault")
            .execute(&admin)
            .await
            .expect("create the database");
        admin.close().await;
        let database_url = pg.url("fault");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");

        let base = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
            let mut env = vec![
                ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
                ("RUST_LOG".to_owned(), "info,sqlx=warn".to_owned()),
                ("DATABASE_URL".to_owned(), database_url.clone()),
            ];
            env.extend(
                extra
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            );
            env
        };

        let mut migrate = Role::new("migrate", &["migrate"], base(&[]), &log_dir);
        migrate.start();
        let status = migrate
            .child
            .as_mut()
            .expect("started")
            .wait()
            .await
            .expect("wait for onboard migrate");
        assert!(
            status.success(),
            "onboard migrate: {status}\n{}",
            migrate.log_tail(30)
        );

        let sandbox_addr = format!("127.0.0.1:{}", free_port());
        let sandbox_url = format!("http://{sandbox_addr}");
        let mut sandbox = Role::new(
            "sandbox",
            &["sandbox"],
            base(&[("ONBOARD_SANDBOX_ADDR", &sandbox_addr)]),
            &log_dir,
        );
        sandbox.start();
        wait_healthy(&http, &format!("{sandbox_url}/healthz"), &mut sandbox).await;

        let ingress_addr = format!("127.0.0.1:{}", free_port());
        let internal_addr = format!("127.0.0.1:{}", free_port());
        let mut ingress = Role::new(
            "ingress",
            &["ingress"],
            base(&[
                ("CLERK_WEBHOOK_SIGNING_SECRET", SECRET),
                ("ONBOARD_INGRESS_ADDR", &ingress_addr),
                ("ONBOARD_DASHBOARD_ADDR", &internal_addr),
            ]),
            &log_dir,
        );
        ingress.start();
        wait_healthy(
            &http,
            &format!("http://{ingress_addr}/healthz"),
            &mut ingress,
        )
        .await;

        let dev = sandbox::SandboxConfig::default();
        let worker_env = base(&[
            ("TWILIO_BASE_URL", &sandbox_url),
            ("TWILIO_ACCOUNT_SID", &dev.twilio_account_sid),
            ("TWILIO_AUTH_TOKEN", &dev.twilio_auth_token),
            ("RESEND_BASE_URL", &sandbox_url),
            ("RESEND_API_KEY", &dev.resend_api_key),
            ("CLERK_API_BASE_URL", &sandbox_url),
            ("CLERK_SECRET_KEY", &dev.clerk_secret_key),
            // Each worker's internal listener (health, metrics) on a port of its own.
            ("ONBOARD_DASHBOARD_ADDR", "127.0.0.1:0"),
        ]);
        let workers = (0..2)
            .map(|i| {
                let mut worker = Role::new(
                    &format!("worker-{i}"),
                    &["worker"],
                    worker_env.clone(),
                    &log_dir,
                );
                worker.start();
                worker
            })
            .collect();

        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&database_url)
            .await
            .expect("connect the test's pool");
        Stack {
            log_dir,
            pool,
            ingress_url: format!("http://{ingress_addr}/webhooks/clerk"),
            sandbox_url,
            http,
            sandbox,
            supervised: Some(Supervised { workers, ingress }),
        }
    }

    /// Tells the sandbox (as Clerk's emulator) each organization's slug, which carries the
    /// Twilio magic: the worker names sub-accounts `org:<id>` and never sends the slug.
    pub async fn register_slugs(&self, plan: &Plan) {
        for org in &plan.orgs {
            let response = self
                .http
                .post(format!("{}/sandbox/register", self.sandbox_url))
                .json(&serde_json::json!({"org_id": org.id, "slug": org.slug}))
                .send()
                .await
                .expect("POST /sandbox/register");
            assert!(response.status().is_success(), "register {}", org.slug);
        }
    }

    /// Hands the workers and the ingress to the supervisor.
    pub fn take_supervised(&mut self) -> Supervised {
        self.supervised.take().expect("roles not handed out twice")
    }

    /// Takes them back.
    pub fn put_back(&mut self, supervised: Supervised) {
        self.supervised = Some(supervised);
    }

    /// Stops every role gracefully (workers first), then the pool.
    pub async fn stop(mut self) {
        if let Some(mut supervised) = self.supervised.take() {
            for worker in &mut supervised.workers {
                worker.stop().await;
            }
            supervised.ingress.stop().await;
        }
        self.sandbox.stop().await;
        self.pool.close().await;
    }
}
