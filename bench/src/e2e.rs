//! `bench e2e`: the whole path, webhook to a finished onboarding. Each onboarding is two signed
//! Svix deliveries (the creator's `user.created`, then `organization.created`, made by
//! `ingress::send::event`) POSTed to a real `onboard ingress` process, onboarded by real
//! `onboard worker` processes against a real `onboard sandbox` process. The email queue's 2/s cap
//! (Resend's limit) is lifted for the run, which alone would bound a burst at 2 onboardings/s.
//!
//! Figures: `e2e_burst_rate` (a burst of `E2E_BURST`, default 1,000: onboardings/s from the first
//! send to the last `completed`, median of `E2E_RUNS`, default 3; its floor, measured before each
//! burst, is `floor/e2e/onboarding.sql`: every row an onboarding writes, in the fewest statements
//! and commits, with no HTTP and no provider calls), `e2e_trickle_p99` (`E2E_TRICKLE`,
//! default 500, at 50/s: ms from the `organization.created` send to `completed`), their p50s, jobs
//! and commits per onboarding, and the peak RSS of each process. With `E2E_STATEMENTS=N` (a
//! server in `DATABASE_URL` that preloads `pg_stat_statements`, the extension created in its
//! admin database) each burst also prints its statements per onboarding and the N most frequent.
//! `E2E_RUNTIME_THREADS=N` runs every process the bench starts with N runtime threads.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use ingress::send::event::{self, EventSpec};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{Figure, Server, floor};

const DATABASE: &str = "bench_e2e";
/// Deliveries in flight at once during the burst (Svix delivers concurrently too).
const BURST_CONCURRENCY: usize = 64;
/// The trickle's pace: 50 onboardings/s.
const TRICKLE_EVERY: Duration = Duration::from_millis(20);
const DEADLINE: Duration = Duration::from_secs(600);
/// The floor's clients: its best of 4, 8 and 16 on a 2-core machine.
const FLOOR_CLIENTS: u32 = 8;
const FLOOR_SECONDS: u32 = 5;

/// `E2E_RUNTIME_THREADS`: the runtime threads of each process the run starts (their
/// `TOKIO_WORKER_THREADS`); unset, tokio's default (one per core).
fn runtime_threads() -> Option<usize> {
    std::env::var("E2E_RUNTIME_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `onboard` binary beside this one, built first in the bench's own profile (a no-op when
/// up to date).
fn onboard_binary() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let release = !cfg!(debug_assertions);
    eprintln!(
        "e2e: building onboard ({}) …",
        if release {
            "release"
        } else {
            "debug: figures not meaningful"
        }
    );
    let mut args = vec!["build", "--quiet", "-p", "onboard"];
    if release {
        args.push("--release");
    }
    let status = std::process::Command::new(cargo)
        .args(args)
        .status()
        .context("running cargo build -p onboard")?;
    ensure!(status.success(), "cargo build -p onboard failed");
    let exe = std::env::current_exe()?;
    let binary = exe
        .parent()
        .map(|dir| dir.join("onboard"))
        .context("no directory beside the bench binary")?;
    ensure!(binary.exists(), "{} is missing", binary.display());
    Ok(binary)
}

fn free_addr() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// One `onboard` process of the run.
struct Process {
    role: String,
    child: Child,
}

impl Process {
    fn spawn(
        binary: &Path,
        role: &str,
        label: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(binary);
        command
            .arg(role)
            .env("RUST_LOG", "warn")
            .env("LOG_FORMAT", "text")
            .stdin(Stdio::null())
            // The sandbox prints its URL on stdout; the roles log there (warnings only).
            .stdout(if role == "sandbox" {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // Only what the run gives each role, not the bench's own environment.
        for name in [
            "DATABASE_URL",
            "CLERK_WEBHOOK_SIGNING_SECRET",
            "TWILIO_ACCOUNT_SID",
            "TWILIO_AUTH_TOKEN",
            "TWILIO_BASE_URL",
            "RESEND_API_KEY",
            "RESEND_BASE_URL",
            "CLERK_SECRET_KEY",
            "CLERK_API_BASE_URL",
            "TOKIO_WORKER_THREADS",
        ] {
            command.env_remove(name);
        }
        if let Some(threads) = runtime_threads() {
            command.env("TOKIO_WORKER_THREADS", threads.to_string());
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting onboard {role}"))?;
        Ok(Process {
            role: label.to_owned(),
            child,
        })
    }

    /// Peak resident set (`VmHWM`) so far, in MB.
    fn peak_rss_mb(&self) -> Option<f64> {
        peak_rss_mb(self.child.id()?)
    }

    /// SIGTERM, then wait (a kill after 30 s).
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// CPU time (user + system) a process used so far, in ms (`/proc/<pid>/stat`, USER_HZ = 100).
fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10.0)
}

/// CPU ms used so far by each process of the stack, and by the database's server processes
/// for this database (summed as `postgres`).
async fn cpu_by_process(stack: &Stack) -> anyhow::Result<Vec<(String, f64)>> {
    let mut out: Vec<(String, f64)> = stack
        .processes
        .iter()
        .filter_map(|p| Some((p.role.clone(), cpu_ms(p.child.id()?)?)))
        .collect();
    let pids: Vec<i32> = sqlx::query_scalar(
        "select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()",
    )
    .fetch_all(&stack.pool)
    .await?;
    let backends = pids
        .iter()
        .filter_map(|pid| cpu_ms(u32::try_from(*pid).ok()?))
        .sum();
    out.push(("postgres".into(), backends));
    Ok(out)
}

fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

async fn fresh_database(server: &Server) -> anyhow::Result<PgPool> {
    let mut admin = PgConnection::connect(&server.admin_url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "drop database if exists {DATABASE} with (force)"
    )))
    .execute(&mut admin)
    .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {DATABASE}")))
        .execute(&mut admin)
        .await?;
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&server.url(DATABASE))
        .await?)
}

/// The processes of one run, on a fresh database.
struct Stack {
    pool: PgPool,
    webhook: String,
    processes: Vec<Process>,
}

impl Stack {
    async fn start(server: &Server, binary: &Path, workers: usize) -> anyhow::Result<Self> {
        let pool = fresh_database(server).await?;
        let url = server.url(DATABASE);
        let status = Command::new(binary)
            .arg("migrate")
            .env("DATABASE_URL", &url)
            .stdout(Stdio::null())
            .status()
            .await?;
        ensure!(status.success(), "onboard migrate failed");

        let mut processes = Vec::new();
        let mut sandbox = Process::spawn(
            binary,
            "sandbox",
            "sandbox",
            &[("ONBOARD_SANDBOX_ADDR", "127.0.0.1:0".into())],
        )?;
        let stdout = sandbox.child.stdout.take().context("sandbox stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the sandbox did not start")??
            .unwrap_or_default();
        // Keep draining: a closed pipe would fail the sandbox's next print.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let base = first
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .with_context(|| format!("no URL in the sandbox's first line: {first}"))?
            .to_owned();
        processes.push(sandbox);

        let dev = sandbox::SandboxConfig::default();
        let ingress_addr = free_addr()?;
        let ingress = Process::spawn(
            binary,
            "ingress",
            "ingress",
            &[
                ("DATABASE_URL", url.clone()),
                (
                    "CLERK_WEBHOOK_SIGNING_SECRET",
                    ingress::DEV_WEBHOOK_SECRET.into(),
                ),
                ("ONBOARD_INGRESS_ADDR", ingress_addr.clone()),
                ("ONBOARD_DASHBOARD_ADDR", free_addr()?),
            ],
        )?;
        processes.push(ingress);
        for n in 0..workers {
            processes.push(Process::spawn(
                binary,
                "worker",
                &format!("worker{}", n + 1),
                &[
                    ("DATABASE_URL", url.clone()),
                    ("ONBOARD_DASHBOARD_ADDR", free_addr()?),
                    (
                        "ONBOARD_DB_MAX_CONNECTIONS",
                        env_usize("E2E_WORKER_POOL", 40).to_string(),
                    ),
                    ("TWILIO_BASE_URL", base.clone()),
                    ("RESEND_BASE_URL", base.clone()),
                    ("CLERK_API_BASE_URL", base.clone()),
                    ("TWILIO_ACCOUNT_SID", dev.twilio_account_sid.clone()),
                    ("TWILIO_AUTH_TOKEN", dev.twilio_auth_token.clone()),
                    ("RESEND_API_KEY", dev.resend_api_key.clone()),
                    ("CLERK_SECRET_KEY", dev.clerk_secret_key.clone()),
                ],
            )?);
        }

        // Ready: the ingress answers, and the workers have set the queues' caps — then lift
        // the email cap (the fetch reads caps from the database each time).
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let healthy = client
                .get(format!("http://{ingress_addr}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            let capped: Option<Option<f64>> =
                sqlx::query_scalar("select max_per_second from onboard.queue where name = $1")
                    .bind(onboarding::saga::EMAIL_QUEUE)
                    .fetch_optional(&pool)
                    .await?;
            if healthy && capped.is_some() {
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(60),
                "the ingress and workers did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        jobs::admin::set_limits(&pool, onboarding::saga::EMAIL_QUEUE, None, None).await?;
        Ok(Stack {
            pool,
            webhook: format!("http://{ingress_addr}/webhooks/clerk"),
            processes,
        })
    }

    fn peak_rss(&self) -> Vec<(String, f64)> {
        self.processes
            .iter()
            .filter_map(|p| Some((p.role.clone(), p.peak_rss_mb()?)))
            .collect()
    }

    async fn stop(self) {
        for process in self.processes {
            process.stop().await;
        }
    }
}

/// One onboarding's two deliveries, signed ahead of time.
struct Onboarding {
    org_id: String,
    deliveries: [(String, i64, String, Vec<u8>); 2],
}

fn onboardings(count: usize) -> anyhow::Result<Vec<Onboarding>> {
    let timestamp = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())?;
    (0..count)
        .map(|_| {
            let about = EventSpec::default().resolve();
            let sign = |event_type: &str| -> anyhow::Result<(String, i64, String, Vec<u8>)> {
                let body = event::build(event_type, &about)?.to_string().into_bytes();
                let id = ingress::send::new_message_id();
                let signature =
                    ingress::send::sign(ingress::DEV_WEBHOOK_SECRET, &id, timestamp, &body)?;
                Ok((id, timestamp, signature, body))
            };
            Ok(Onboarding {
                org_id: about.org_id.clone(),
                deliveries: [sign("user.created")?, sign("organization.created")?],
            })
        })
        .collect()
}

/// Onboardings sent before a measured burst (`E2E_WARMUP`, default 200).
const WARMUP: usize = 200;

/// Gives the database the history a running service has: onboards `E2E_WARMUP` organizations,
/// then `ANALYZE`s, as autovacuum does within a minute of that much activity. On a brand-new
/// database every pooled connection keeps the plans it made while the job table was empty
/// (sequential scans) until the first analyze: a 2-second burst would measure only that.
/// Returns how many onboardings it ran.
async fn warm_up(stack: &Stack, client: &reqwest::Client) -> anyhow::Result<usize> {
    let count = env_usize("E2E_WARMUP", WARMUP);
    if count == 0 {
        return Ok(0);
    }
    send_all(client, &stack.webhook, &onboardings(count)?).await?;
    completions(&stack.pool, count).await?;
    sqlx::query("analyze").execute(&stack.pool).await?;
    Ok(count)
}

/// Sends every onboarding, [`BURST_CONCURRENCY`] at a time; returns each org with the time
/// its `organization.created` was sent.
async fn send_all(
    client: &reqwest::Client,
    url: &str,
    batch: &[Onboarding],
) -> anyhow::Result<Vec<(String, f64)>> {
    futures::stream::iter(batch)
        .map(|onboarding| async move {
            Ok((
                onboarding.org_id.clone(),
                send(client, url, onboarding).await?,
            ))
        })
        .buffer_unordered(BURST_CONCURRENCY)
        .collect::<Vec<anyhow::Result<_>>>()
        .await
        .into_iter()
        .collect()
}

/// Sends an onboarding's deliveries in order; returns when `organization.created` was sent
/// (Unix seconds, as a float).
async fn send(client: &reqwest::Client, url: &str, onboarding: &Onboarding) -> anyhow::Result<f64> {
    let mut sent_at = 0.0;
    for (id, timestamp, signature, body) in &onboarding.deliveries {
        sent_at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
        let response = client
            .post(url)
            .header("content-type", "application/json")
            .header("svix-id", id)
            .header("svix-timestamp", timestamp.to_string())
            .header("svix-signature", signature)
            .body(body.clone())
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            bail!("the webhook answered {status}: {}", response.text().await?);
        }
    }
    Ok(sent_at)
}

async fn commits(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "select xact_commit from pg_stat_database where datname = current_database()",
    )
    .fetch_one(pool)
    .await?)
}

/// Waits until `count` sagas completed (failing on any other terminal state), polling every
/// 50 ms; returns each org's completion time (Unix seconds).
async fn completions(pool: &PgPool, count: usize) -> anyhow::Result<Vec<(String, f64)>> {
    let started = Instant::now();
    loop {
        let (completed, failed): (i64, i64) = sqlx::query_as(
            "select count(*) filter (where state = 'completed'),
                    count(*) filter (where state in ('completed_with_errors', 'compensating', 'compensated', 'compensation_failed'))
               from onboard.onboarding",
        )
        .fetch_one(pool)
        .await?;
        ensure!(failed == 0, "{failed} onboardings did not complete");
        if usize::try_from(completed)? >= count {
            break;
        }
        ensure!(
            started.elapsed() < DEADLINE,
            "{completed} of {count} onboardings completed in {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(sqlx::query_as(
        "select clerk_org_id, extract(epoch from updated_at)::float8 from onboard.onboarding",
    )
    .fetch_all(pool)
    .await?)
}

/// Where the trickle's time goes: per job kind, the median wait (created → attempted) and run
/// (attempted → finalized), in ms.
async fn explain(pool: &PgPool) -> anyhow::Result<()> {
    let rows: Vec<(String, i64, f64, f64)> = sqlx::query_as(
        "select kind, count(*),
                (percentile_cont(0.5) within group (order by extract(epoch from attempted_at - created_at)) * 1000)::float8,
                (percentile_cont(0.5) within group (order by extract(epoch from finalized_at - attempted_at)) * 1000)::float8
           from onboard.job where finalized_at is not null group by kind order by min(id)",
    )
    .fetch_all(pool)
    .await?;
    eprintln!("e2e: trickle, per job kind: median wait (created → attempted) and run, ms");
    for (kind, count, wait, run) in rows {
        eprintln!("  {kind:<34} {count:>6} {wait:>9.1} {run:>9.1}");
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latencies (ms) from each org's `organization.created` send to its completion, sorted.
fn latencies(sent: &[(String, f64)], done: &[(String, f64)]) -> Vec<f64> {
    let done: std::collections::HashMap<&str, f64> =
        done.iter().map(|(org, at)| (org.as_str(), *at)).collect();
    let mut out: Vec<f64> = sent
        .iter()
        .filter_map(|(org, at)| Some((done.get(org.as_str())? - at) * 1000.0))
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

fn figure(name: &str, value: f64, unit: &'static str, config: String, target: &str) -> Figure {
    Figure {
        figure: name.into(),
        value,
        unit,
        floor: None,
        floor_config: config,
        target: target.into(),
    }
}

struct Burst {
    rate: f64,
    p50: f64,
    jobs: f64,
    commits: f64,
}

async fn burst(
    server: &Server,
    binary: &Path,
    workers: usize,
    count: usize,
    rss: &mut Vec<(String, f64)>,
) -> anyhow::Result<Burst> {
    let stack = Stack::start(server, binary, workers).await?;
    let client = reqwest::Client::new();
    let warmup = warm_up(&stack, &client).await?;
    let batch = onboardings(count)?;
    let before = commits(&stack.pool).await?;
    let jobs_before: i64 = sqlx::query_scalar("select count(*) from onboard.job")
        .fetch_one(&stack.pool)
        .await?;
    let cpu_before = cpu_by_process(&stack).await?;
    let statements = env_usize("E2E_STATEMENTS", 0);
    if statements > 0 {
        reset_statements(server).await?;
    }
    let first = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let sent = send_all(&client, &stack.webhook, &batch).await?;
    let done = completions(&stack.pool, warmup + count).await?;
    let measured: std::collections::HashSet<&str> =
        sent.iter().map(|(org, _)| org.as_str()).collect();
    let last = done
        .iter()
        .filter(|(org, _)| measured.contains(org.as_str()))
        .map(|(_, at)| *at)
        .fold(f64::MIN, f64::max);
    let jobs: i64 = sqlx::query_scalar::<_, i64>("select count(*) from onboard.job")
        .fetch_one(&stack.pool)
        .await?
        - jobs_before;
    let commits = (commits(&stack.pool).await? - before) as f64;
    let cpu_after = cpu_by_process(&stack).await?;
    let per_org: Vec<String> = cpu_after
        .iter()
        .map(|(role, after)| {
            let before = cpu_before
                .iter()
                .find(|(r, _)| r == role)
                .map_or(0.0, |(_, b)| *b);
            // Backends that connected during the burst started from zero.
            let used = if after >= &before {
                after - before
            } else {
                *after
            };
            format!("{role} {:.2}", used / count as f64)
        })
        .collect();
    eprintln!(
        "e2e: CPU ms per onboarding in the burst (database: this database's server processes): {}",
        per_org.join(", ")
    );
    if statements > 0 {
        print_statements(server, count, statements).await?;
    }
    let lat = latencies(&sent, &done);
    merge_rss(rss, stack.peak_rss());
    stack.stop().await;
    Ok(Burst {
        rate: count as f64 / (last - first),
        p50: percentile(&lat, 50.0),
        jobs: jobs as f64 / count as f64,
        commits: commits / count as f64,
    })
}

/// Resets `pg_stat_statements` (`E2E_STATEMENTS`: the server must preload it and its admin
/// database have the extension).
async fn reset_statements(server: &Server) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(&server.admin_url).await?;
    sqlx::query("select pg_stat_statements_reset()")
        .execute(&mut admin)
        .await
        .context(
            "E2E_STATEMENTS needs pg_stat_statements preloaded and created in the admin database",
        )?;
    Ok(())
}

/// Prints the `limit` statements of the burst's database that ran most often, per onboarding:
/// calls, mean ms, rows per call, and the total.
async fn print_statements(server: &Server, count: usize, limit: usize) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(&server.admin_url).await?;
    let rows: Vec<(f64, f64, f64, f64, f64, String)> = sqlx::query_as(
        "select s.calls::float8 / $1, s.mean_exec_time, s.rows::float8 / greatest(s.calls, 1),
                s.total_exec_time / $1, s.total_plan_time / $1,
                regexp_replace(s.query, '\\s+', ' ', 'g')
           from pg_stat_statements s join pg_database d on d.oid = s.dbid
          where d.datname = $2 order by s.calls desc",
    )
    .bind(count as f64)
    .bind(DATABASE)
    .fetch_all(&mut admin)
    .await?;
    let total: f64 = rows.iter().map(|r| r.0).sum();
    let exec: f64 = rows.iter().map(|r| r.3).sum();
    let plan: f64 = rows.iter().map(|r| r.4).sum();
    eprintln!(
        "e2e: statements per onboarding {total:.1} ({exec:.2} ms executing, {plan:.2} ms planning when pg_stat_statements.track_planning is on); the {limit} most frequent (calls/onb, mean ms, rows/call, ms/onb executing, ms/onb planning, query):"
    );
    for (calls, mean, rows, ms, plan, query) in rows.iter().take(limit) {
        let query: String = query.chars().take(160).collect();
        eprintln!("  {calls:>6.2} {mean:>7.3} {rows:>6.2} {ms:>6.3} {plan:>6.3}  {query}");
    }
    Ok(())
}

fn merge_rss(into: &mut Vec<(String, f64)>, from: Vec<(String, f64)>) {
    for (role, mb) in from {
        match into.iter_mut().find(|(r, _)| *r == role) {
            Some((_, peak)) => *peak = peak.max(mb),
            None => into.push((role, mb)),
        }
    }
}

pub async fn run(server: &Server) -> anyhow::Result<Vec<Figure>> {
    let burst_size = env_usize("E2E_BURST", 1_000);
    let trickle_size = env_usize("E2E_TRICKLE", 500);
    let runs = env_usize("E2E_RUNS", 3).max(1);
    let workers = env_usize("E2E_WORKERS", 1).max(1);
    let binary = onboard_binary()?;
    eprintln!(
        "e2e: email queue cap (2/s, Resend's limit) LIFTED for this run; {workers} worker process(es)"
    );
    let mut rss = Vec::new();

    let mut bursts = Vec::new();
    let mut floors = Vec::new();
    for run in 1..=runs {
        eprintln!(
            "e2e: floor {run}/{runs}: pgbench onboarding.sql c={FLOOR_CLIENTS} T={FLOOR_SECONDS}s …"
        );
        floors.push(floor::onboarding(server, FLOOR_CLIENTS, FLOOR_SECONDS)?);
        eprintln!("e2e: burst {run}/{runs}: {burst_size} onboardings as signed webhooks …");
        bursts.push(burst(server, &binary, workers, burst_size, &mut rss).await?);
    }
    eprintln!(
        "e2e: floors {:?} onboardings/s, bursts {:?} onboardings/s",
        floors.iter().map(|f| f.round()).collect::<Vec<_>>(),
        bursts.iter().map(|b| b.rate.round()).collect::<Vec<_>>()
    );
    floors.sort_by(f64::total_cmp);
    let floor_rate = floors[floors.len() / 2];
    bursts.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let median = &bursts[bursts.len() / 2];

    eprintln!("e2e: trickle: {trickle_size} onboardings at 50/s …");
    let stack = Stack::start(server, &binary, workers).await?;
    let batch = onboardings(trickle_size)?;
    let client = reqwest::Client::new();
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (n, onboarding) in batch.into_iter().enumerate() {
        tokio::time::sleep_until(start + TRICKLE_EVERY * u32::try_from(n)?).await;
        let client = client.clone();
        let url = stack.webhook.clone();
        tasks.push(tokio::spawn(async move {
            let at = send(&client, &url, &onboarding).await?;
            Ok::<_, anyhow::Error>((onboarding.org_id, at))
        }));
    }
    let mut sent = Vec::new();
    for task in tasks {
        sent.push(task.await??);
    }
    let done = completions(&stack.pool, trickle_size).await?;
    let trickle = latencies(&sent, &done);
    explain(&stack.pool).await?;
    merge_rss(&mut rss, stack.peak_rss());
    stack.stop().await;
    merge_rss(
        &mut rss,
        vec![(
            "bench".into(),
            peak_rss_mb(std::process::id()).unwrap_or(f64::NAN),
        )],
    );

    let threads = runtime_threads().map_or("as many runtime threads as cores".into(), |n| {
        format!("TOKIO_WORKER_THREADS={n}")
    });
    let burst_config = format!(
        "{burst_size} onboardings, {BURST_CONCURRENCY} deliveries in flight, median of {runs}, {workers} worker(s), {threads}, email cap lifted; floor: pgbench floor/e2e/onboarding.sql c={FLOOR_CLIENTS} T={FLOOR_SECONDS}s before each burst (median), SQL only"
    );
    let trickle_config =
        format!("{trickle_size} onboardings at 50/s, organization.created send → completed");
    let mut figures = vec![
        Figure {
            floor: Some(floor_rate),
            ..figure(
                "e2e_burst_rate",
                median.rate,
                "orgs/s",
                burst_config,
                ">= 500",
            )
        },
        figure(
            "e2e_burst_p50",
            median.p50,
            "ms",
            "organization.created send → completed, in the burst".into(),
            "",
        ),
        figure(
            "e2e_trickle_p99",
            percentile(&trickle, 99.0),
            "ms",
            trickle_config,
            "<= 200",
        ),
        figure(
            "e2e_trickle_p50",
            percentile(&trickle, 50.0),
            "ms",
            String::new(),
            "",
        ),
        figure(
            "e2e_jobs_per_onboarding",
            median.jobs,
            "jobs",
            "every job of the burst / onboardings (user.created's included)".into(),
            "",
        ),
        figure(
            "e2e_commits_per_onboarding",
            median.commits,
            "commits",
            "pg_stat_database.xact_commit delta, all sessions (the bench's polls included)".into(),
            "",
        ),
    ];
    for (role, mb) in rss {
        figures.push(figure(
            &format!("e2e_peak_rss_{role}"),
            mb,
            "MB",
            "VmHWM".into(),
            "",
        ));
    }
    Ok(figures)
}
