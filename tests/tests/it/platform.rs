//! The process around the roles: the public listener's header deadline and rejection bodies,
//! a role that waits for its database at start, and the internal listener's metrics of a
//! worker run alone (`onboard worker`'s `Process`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use integration_tests::stack::{Stack, StackOptions, provider_settings};
use integration_tests::{fresh_db, wait_for};
use jobs::local_pg::{Durability, LocalPostgres};
use onboard::process::{Process, Roles, WorkerRole};
use onboard::settings::Database;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// An ingress on free ports with `adjust` applied to its settings.
async fn ingress(
    db: &integration_tests::TestDb,
    adjust: impl FnOnce(&mut ingress::Settings),
) -> ingress::Running {
    let secrets = ingress::WebhookSecrets::parse(&SECRET.to_owned().into()).unwrap();
    let mut settings = ingress::Settings::new(secrets);
    settings.ingress_addr = "127.0.0.1:0".parse().unwrap();
    settings.dashboard_addr = None;
    adjust(&mut settings);
    ingress::spawn(db.pool.clone(), &settings).await.unwrap()
}

#[tokio::test]
async fn a_connection_that_sends_half_a_header_is_closed_by_the_server() {
    let db = fresh_db().await;
    let app = ingress(&db, |s| s.header_timeout = Duration::from_millis(300)).await;
    let mut stream = tokio::net::TcpStream::connect(app.ingress_addr)
        .await
        .unwrap();
    stream
        .write_all(b"POST /webhooks/clerk HTTP/1.1\r\nHost: ingress.test\r\nsvix-id: msg_")
        .await
        .unwrap();
    // The server closes the connection (EOF, or a reset) well within this generous deadline;
    // without a header deadline the read would wait for ever.
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut buffer))
        .await
        .expect("the server closes a connection whose headers never finish");
    assert!(
        read.is_err() || !buffer.starts_with(b"HTTP/1.1 2"),
        "{:?}",
        String::from_utf8_lossy(&buffer)
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_request_whose_body_never_finishes_is_answered_408_in_the_error_shape() {
    let db = fresh_db().await;
    let app = ingress(&db, |s| s.request_timeout = Duration::from_millis(300)).await;
    let mut stream = tokio::net::TcpStream::connect(app.ingress_addr)
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /webhooks/clerk HTTP/1.1\r\nHost: ingress.test\r\nsvix-id: msg_slow\r\n\
              svix-timestamp: 1\r\nsvix-signature: v1,AAAA\r\ncontent-length: 100\r\n\r\n{\"type\"",
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response))
        .await
        .expect("the server answers a request that takes too long")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("\"request_timeout\""), "{response}");
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn rejections_from_the_router_and_the_layers_keep_the_error_body_shape() {
    let db = fresh_db().await;
    let app = ingress(&db, |s| s.body_limit = 1024).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/webhooks/clerk", app.ingress_addr);

    let wrong_method = client.get(&url).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert!(wrong_method.headers().contains_key("x-request-id"));
    let body: Value = wrong_method.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");

    // A declared length over the limit is refused by the layer before the handler runs.
    let too_large = client
        .post(&url)
        .body(vec![b'a'; 1025])
        .send()
        .await
        .unwrap();
    assert_eq!(too_large.status(), 413);
    let body: Value = too_large.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("1024"),
        "{body}"
    );

    // An undeclared (chunked) length is cut off at the limit.
    let mut stream = tokio::net::TcpStream::connect(app.ingress_addr)
        .await
        .unwrap();
    let chunk = "a".repeat(2048);
    let request = format!(
        "POST /webhooks/clerk HTTP/1.1\r\nHost: ingress.test\r\nsvix-id: msg_chunked\r\n\
         svix-timestamp: {}\r\nsvix-signature: v1,AAAA\r\ntransfer-encoding: chunked\r\n\
         connection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        ingress::Clock::system().now(),
        chunk.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("\"payload_too_large\""), "{response}");
    app.shutdown().await.unwrap();
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(client: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let response = client.get(url).send().await.ok()?;
    Some((response.status().as_u16(), response.text().await.ok()?))
}

/// A [`Process`] serving on its own task until [`Running::stop`].
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn start(process: Process) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(process.run(async move {
            let _ = stopped.await;
        }));
        Running { stop, task }
    }

    /// Asks it to stop and waits, 30 s at most, for it to end without an error (`what` names
    /// that expectation).
    async fn stop(self, what: &str) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect(what)
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn a_worker_started_before_its_database_becomes_ready_once_the_database_is_up() {
    let port = free_port();
    let database = Database::new(&format!("postgres://postgres@127.0.0.1:{port}/postgres"));
    let worker_settings = worker::runtime::WorkerSettings {
        shutdown_deadline: Duration::from_secs(5),
        ..worker::runtime::WorkerSettings::default()
    };
    let roles = Roles {
        ingress: None,
        worker: Some(WorkerRole {
            providers: provider_settings("http://127.0.0.1:9", Duration::from_millis(500)),
            settings: worker_settings,
            retention: Default::default(),
        }),
        dashboard: None,
    };
    let process = Process::bind(&database, "127.0.0.1:0".parse().unwrap(), roles)
        .await
        .unwrap();
    let readyz = format!("http://{}/readyz", process.internal_addr());
    let running = Running::start(process);
    let client = reqwest::Client::new();

    let (status, body) = wait_for("the internal listener", Duration::from_secs(30), || {
        get(&client, &readyz)
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"unavailable\""), "{body}");
    assert!(
        !running.task.is_finished(),
        "the worker gave up instead of waiting"
    );

    // Now the database comes up, and is migrated as `onboard migrate` would.
    let cluster = tokio::task::spawn_blocking(move || {
        LocalPostgres::start_on(None, Durability::Relaxed, port)
    })
    .await
    .unwrap()
    .expect("start PostgreSQL on the port the worker waits on");
    let pool = jobs::db::connect(&cluster.url("postgres"), &jobs::db::PoolSettings::default())
        .await
        .unwrap();
    jobs::db::migrate(&pool).await.unwrap();

    wait_for(
        "the worker to be ready",
        Duration::from_secs(60),
        || async {
            match get(&client, &readyz).await {
                Some((200, _)) => Some(()),
                _ => None,
            }
        },
    )
    .await;
    running.stop("the worker stops").await;
    drop(cluster);
}

/// A TCP proxy in front of the test cluster: connection `n` (from 0) is forwarded when
/// `forward(n)`, and otherwise reset, as a restarting PostgreSQL does. Returns its port and the
/// number of connections reset so far.
async fn proxy(forward: impl Fn(usize) -> bool + Send + 'static) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let target = ("127.0.0.1", integration_tests::cluster().port());
    let reset = Arc::new(AtomicUsize::new(0));
    let counter = reset.clone();
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((mut client, _)) = listener.accept().await {
            accepted += 1;
            if !forward(accepted - 1) {
                client.set_zero_linger().unwrap();
                drop(client);
                counter.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (port, reset)
}

/// `db`'s URL through the proxy on `proxy_port`.
fn through(db: &integration_tests::TestDb, proxy_port: u16) -> String {
    let cluster_port = integration_tests::cluster().port();
    let url = db
        .url
        .replace(&format!(":{cluster_port}/"), &format!(":{proxy_port}/"));
    assert_ne!(url, db.url, "the URL goes through the proxy");
    url
}

#[tokio::test]
async fn configuring_the_queues_waits_out_a_database_that_resets_its_connections() {
    let db = fresh_db().await;
    let (proxy_port, reset) = proxy(|n| n >= 2).await;
    let pool = jobs::db::connect_lazy(
        &through(&db, proxy_port),
        &jobs::db::PoolSettings::default(),
    )
    .unwrap();

    tokio::time::timeout(
        Duration::from_secs(60),
        worker::app::configure_queues(&pool),
    )
    .await
    .expect("the queues are configured once the database answers")
    .expect("a reset connection is retried, not returned");

    assert_eq!(
        reset.load(Ordering::SeqCst),
        2,
        "the proxy reset two connections"
    );
    let cap: Option<f64> =
        sqlx::query_scalar("select max_per_second from onboard.queue where name = $1")
            .bind(onboarding::saga::EMAIL_QUEUE)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(cap, Some(2.0));
}

#[tokio::test]
async fn a_worker_configuring_its_queues_while_the_database_is_gone_stops_when_asked() {
    let db = fresh_db().await;
    // The readiness check's connection goes through; every later one is reset.
    let (proxy_port, reset) = proxy(|n| n == 0).await;
    let roles = Roles {
        ingress: None,
        worker: Some(WorkerRole {
            providers: provider_settings("http://127.0.0.1:9", Duration::from_millis(500)),
            settings: worker::runtime::WorkerSettings::default(),
            retention: Default::default(),
        }),
        dashboard: None,
    };
    let database = Database::new(&through(&db, proxy_port));
    let process = Process::bind(&database, "127.0.0.1:0".parse().unwrap(), roles)
        .await
        .unwrap();
    let running = Running::start(process);
    // Past readiness, the worker's connections are reset and configuring is retried.
    wait_for(
        "the worker to retry configuring its queues",
        Duration::from_secs(60),
        || async { (reset.load(Ordering::SeqCst) >= 2).then_some(()) },
    )
    .await;
    assert!(
        !running.task.is_finished(),
        "the worker waits for its database"
    );

    running
        .stop("the worker stops while its database is still gone")
        .await;
}

/// The value of every series named `name` whose labels include each of `labels`, summed.
fn sum_series(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (set, value) = rest.split_once("} ")?;
            labels
                .iter()
                .all(|l| set.split(',').any(|kv| kv == *l))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[tokio::test]
async fn onboard_worker_alone_serves_job_and_provider_counters_on_its_internal_listener() {
    let stack = Stack::start(StackOptions {
        worker: false,
        ..StackOptions::default()
    })
    .await;
    let mut worker_settings = worker::runtime::WorkerSettings::default();
    worker_settings.maintenance.every = Duration::from_millis(100);
    worker_settings.sampler.every = Duration::from_millis(100);
    worker_settings.shutdown_deadline = Duration::from_secs(10);
    let roles = Roles {
        ingress: None,
        worker: Some(WorkerRole {
            providers: provider_settings(&stack.sandbox.base_url(), Duration::from_millis(700)),
            settings: worker_settings,
            retention: Default::default(),
        }),
        dashboard: None,
    };
    let process = Process::bind(
        &Database::new(&stack.db.url),
        "127.0.0.1:0".parse().unwrap(),
        roles,
    )
    .await
    .unwrap();
    let internal = format!("http://{}", process.internal_addr());
    let running = Running::start(process);
    let client = reqwest::Client::new();
    let metrics = || async {
        get(&client, &format!("{internal}/metrics"))
            .await
            .map(|(_, text)| text)
            .unwrap_or_default()
    };
    let completed = |text: &str| {
        sum_series(
            text,
            "onboard_jobs_total",
            &[
                "queue=\"onboarding\"",
                "kind=\"onboarding.twilio_subaccount\"",
                "outcome=\"completed\"",
            ],
        )
    };
    let created = |text: &str| {
        sum_series(
            text,
            "onboard_provider_calls_total",
            &[
                "provider=\"twilio\"",
                "action=\"create_subaccount\"",
                "status=\"201\"",
            ],
        )
    };
    let before = metrics().await;

    for i in 0..2 {
        let (org, user) = (format!("org_metrics{i}"), format!("user_metrics{i}"));
        stack
            .deliver_new_org(
                &org,
                &format!("metrics{i}"),
                &user,
                &format!("owner{i}@metrics.test"),
            )
            .await;
    }
    for i in 0..2 {
        stack
            .wait_saga(&format!("org_metrics{i}"), "completed")
            .await;
    }

    let (status, _) = get(&client, &format!("{internal}/healthz")).await.unwrap();
    assert_eq!(status, 200);
    let (status, body) = get(&client, &format!("{internal}/readyz")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let after = metrics().await;
    assert!(completed(&after) >= completed(&before) + 2.0, "{after}");
    assert!(created(&after) >= created(&before) + 2.0, "{after}");
    assert!(
        sum_series(
            &after,
            "onboard_job_attempt_seconds_count",
            &["queue=\"onboarding\""]
        ) > 0.0,
        "{after}"
    );
    // The sampler reports every queue the worker serves, empty ones at 0.
    wait_for("the queue gauges", Duration::from_secs(30), || async {
        let text = metrics().await;
        text.lines()
            .any(|l| l.starts_with("onboard_queue_depth{queue=\"onboarding\"}"))
            .then_some(())
    })
    .await;
    assert!(after.contains("onboard_leases_reaped_total"), "{after}");

    running.stop("the worker stops").await;
    stack.stop().await;
}
