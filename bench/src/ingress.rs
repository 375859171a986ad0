//! `bench ingress`: distinct, pre-signed `organization.created` deliveries replayed against our
//! ingress on loopback at concurrency 1, 16 and 64, next to pgbench running the one-round-trip
//! floor (`peers-bench/ingress/pgbench/floor_1rt.sql`) at the same concurrency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};

use crate::floor::{Pgbench, peers_bench};
use crate::machine::MachineUse;
use crate::{Figure, Server};

const SECONDS: u64 = 10;
/// One slice of the alternating floor / ours measurement.
const SLICE: Duration = Duration::from_secs(3);
const WARMUP: Duration = Duration::from_secs(2);
const SECRET: &str = "whsec_YmVuY2gtb25seS1vbmJvYXJkLXdlYmhvb2stc2VjcmV0";

struct Delivery {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

fn fixture() -> anyhow::Result<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/clerk/organization.created.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(&path)?)?)
}

fn deliveries(count: usize, offset: usize) -> anyhow::Result<Vec<Delivery>> {
    let template = fixture()?;
    let timestamp = chrono::Utc::now().timestamp();
    (0..count)
        .map(|i| {
            let n = offset + i;
            let mut event = template.clone();
            event["data"]["id"] = Value::String(format!("org_bench{n:09}"));
            event["data"]["slug"] = Value::String(format!("bench-{n}"));
            let body = serde_json::to_vec(&event)?;
            let id = format!("msg_bench{n:09}");
            let signature = ingress::send::sign(SECRET, &id, timestamp, &body)?;
            Ok(Delivery {
                id,
                timestamp: timestamp.to_string(),
                signature,
                body,
            })
        })
        .collect()
}

struct Run {
    requests: usize,
    non_2xx: usize,
    latencies_ms: Vec<f64>,
    /// The floor's p50, p90 and p99 when measured beside ours (empty otherwise).
    floor_latencies_ms: Vec<f64>,
}

async fn replay(
    url: String,
    deliveries: Arc<Vec<Delivery>>,
    concurrency: usize,
) -> anyhow::Result<Run> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + Duration::from_secs(SECONDS);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, deliveries, next) = (
            client.clone(),
            url.clone(),
            deliveries.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut run = Run {
                requests: 0,
                non_2xx: 0,
                latencies_ms: Vec::new(),
                floor_latencies_ms: Vec::new(),
            };
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(d) = deliveries.get(i) else { break };
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("svix-id", &d.id)
                    .header("svix-timestamp", &d.timestamp)
                    .header("svix-signature", &d.signature)
                    .body(d.body.clone())
                    .send()
                    .await;
                let done = Instant::now();
                if sent >= measure_from && done <= end {
                    run.requests += 1;
                    run.latencies_ms.push((done - sent).as_secs_f64() * 1000.0);
                    match response {
                        Ok(r) if r.status().is_success() => {}
                        _ => run.non_2xx += 1,
                    }
                }
            }
            run
        }));
    }
    let mut total = Run {
        requests: 0,
        non_2xx: 0,
        latencies_ms: Vec::new(),
        floor_latencies_ms: Vec::new(),
    };
    for task in tasks {
        let run = task.await?;
        total.requests += run.requests;
        total.non_2xx += run.non_2xx;
        total.latencies_ms.extend(run.latencies_ms);
    }
    if next.load(std::sync::atomic::Ordering::Relaxed) >= deliveries.len() {
        anyhow::bail!("ran out of pre-signed deliveries; raise the count");
    }
    Ok(total)
}

/// Writes a request file for `peers-bench/ingress/loadgen/replay.lua`: a shared timestamp, the
/// body around the org id, then one `svix-id, signature, org id` line per request.
fn request_file(path: &std::path::Path, count: usize, offset: usize) -> anyhow::Result<()> {
    use std::io::Write;
    const PLACEHOLDER: &str = "ORG_ID_PLACEHOLDER_XXXXXXXXX";
    let mut event = fixture()?;
    event["data"]["id"] = Value::String(PLACEHOLDER.into());
    let body = serde_json::to_string(&event)?;
    let (pre, suf) = body.split_once(PLACEHOLDER).expect("placeholder in body");
    let timestamp = chrono::Utc::now().timestamp();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "ts\t{timestamp}")?;
    writeln!(out, "pre\t{pre}")?;
    writeln!(out, "suf\t{suf}")?;
    for i in 0..count {
        let n = offset + i;
        let org = format!("org_wrk{n:021}");
        debug_assert_eq!(org.len(), PLACEHOLDER.len());
        let id = format!("msg_wrk{n:021}");
        let signature = ingress::send::sign(
            SECRET,
            &id,
            timestamp,
            format!("{pre}{org}{suf}").as_bytes(),
        )?;
        writeln!(out, "{id}\t{signature}\t{org}")?;
    }
    Ok(())
}

/// wrk's JSON summary line from replay.lua.
fn wrk(
    url: &str,
    concurrency: usize,
    seconds: u64,
    file: &std::path::Path,
) -> anyhow::Result<Value> {
    let script = peers_bench().join("ingress/loadgen/replay.lua");
    let out = std::process::Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{concurrency}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .arg("--")
        .arg(file)
        .args(["1", "count"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("JSON "))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no JSON line from wrk: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    Ok(serde_json::from_str(line)?)
}

fn have_wrk() -> bool {
    std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok()
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (samples.len() as f64 - 1.0)).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

async fn fresh(server: &Server) -> anyhow::Result<sqlx::PgPool> {
    let mut admin = PgConnection::connect(&server.admin_url).await?;
    sqlx::raw_sql("drop database if exists bench_ingress with (force)")
        .execute(&mut admin)
        .await?;
    sqlx::raw_sql("create database bench_ingress")
        .execute(&mut admin)
        .await?;
    let pool = PgPoolOptions::new()
        // A ping before every checkout costs a round trip per request; a broken connection
        // fails its query instead and the pool replaces it.
        .test_before_acquire(false)
        .max_connections(32)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&server.url("bench_ingress"))
        .await?;
    jobs::db::migrate(&pool).await?;
    if let Ok(sql) = std::env::var("BENCH_INGRESS_SQL") {
        // For experiments: e.g. drop an index to see what it costs.
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await?;
    }
    sqlx::raw_sql("checkpoint").execute(&pool).await?;
    Ok(pool)
}

fn floor(server: &Server, concurrency: u32) -> anyhow::Result<f64> {
    let db = floor_database(server)?;
    floor_run(&db, concurrency as usize, Duration::from_secs(SECONDS))?.tps(server)
}

/// A fresh database with the floor's schema.
fn floor_database(server: &Server) -> anyhow::Result<String> {
    let db = "floor_ingress";
    crate::floor::fresh_database(server, db)?;
    crate::floor::psql_file(server, db, &peers_bench().join("ingress/schema.sql"))?;
    crate::floor::psql(server, db, "checkpoint")?;
    Ok(db.to_owned())
}

/// The one-round-trip floor on `db` at `concurrency` for `length`, to run.
fn floor_run(db: &str, concurrency: usize, length: Duration) -> anyhow::Result<Pgbench<'_>> {
    let payload = serde_json::to_string(&fixture()?)?;
    Ok(Pgbench {
        db,
        script: peers_bench().join("ingress/pgbench/floor_1rt.sql"),
        clients: concurrency as u32,
        seconds: length.as_secs() as u32,
        define: format!("payload={payload}"),
    })
}

/// Alternating slices per concurrency (`BENCH_SLICES`, default 5).
fn slices() -> usize {
    std::env::var("BENCH_SLICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(5)
}

fn median(values: &mut [f64]) -> f64 {
    percentile(values, 50.0)
}

pub async fn run(server: &Server) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let mut offset = 0;
    let levels: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 64]);
    let from_wrk = have_wrk();
    let slices = slices();
    for concurrency in levels {
        eprintln!("ours at concurrency {concurrency} …");
        let pool = fresh(server).await?;
        let secrets = ingress::WebhookSecrets::parse(&SECRET.to_owned().into())?;
        let mut settings = ingress::Settings::new(secrets);
        settings.ingress_addr = "127.0.0.1:0".parse()?;
        settings.dashboard_addr = None;
        if let Some(ms) = std::env::var("BENCH_NOTIFY_EVERY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            settings.notify_every = Duration::from_millis(ms);
        }
        let running = ingress::spawn(pool.clone(), &settings).await?;
        let url = format!("http://{}/webhooks/clerk", running.ingress_addr);
        let (floor_rate, floor_cfg, rate, mut run) = if from_wrk {
            // wrk (as the peers were measured): a light C client, 1 thread, C connections. The
            // floor and ours alternate in short slices, so that a machine whose speed drifts
            // during the run slows both alike; each figure is the median of its slices.
            let per_second = if concurrency == 1 { 5_000 } else { 30_000 };
            let slice_requests = per_second * SLICE.as_secs() as usize;
            let floor_db = floor_database(server)?;
            let file = std::env::temp_dir().join("onboard-bench-slice.req");
            request_file(&file, per_second * WARMUP.as_secs() as usize, offset)?;
            offset += 1_000_000;
            let (warm_url, path) = (url.clone(), file.clone());
            tokio::task::spawn_blocking(move || {
                wrk(&warm_url, concurrency, WARMUP.as_secs(), &path)
            })
            .await??;
            floor_run(&floor_db, concurrency, WARMUP)?.tps(server)?;
            let (mut floors, mut ours, mut p50s, mut p90s, mut p99s) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            // The floor's latency percentiles per slice: [p50s, p90s, p99s].
            let mut floor_percentiles = [Vec::new(), Vec::new(), Vec::new()];
            let (mut requests, mut non_2xx) = (0, 0);
            // What the machine did during each side's slices: [floor, ours].
            let mut machine = [MachineUse::default(), MachineUse::default()];
            let writes_before = running.state.writer().stats();
            for _ in 0..slices {
                let before = MachineUse::now();
                let (floor_rate, mut latencies) =
                    floor_run(&floor_db, concurrency, SLICE)?.tps_and_latencies(server)?;
                machine[0].add(before, MachineUse::now(), floor_rate * SLICE.as_secs_f64());
                floors.push(floor_rate);
                for (at, p) in [50.0, 90.0, 99.0].into_iter().enumerate() {
                    floor_percentiles[at].push(percentile(&mut latencies, p));
                }
                request_file(&file, slice_requests, offset)?;
                offset += 1_000_000;
                let (url, path) = (url.clone(), file.clone());
                let before = MachineUse::now();
                let summary = tokio::task::spawn_blocking(move || {
                    wrk(&url, concurrency, SLICE.as_secs(), &path)
                })
                .await??;
                machine[1].add(
                    before,
                    MachineUse::now(),
                    summary["requests"].as_f64().unwrap_or_default(),
                );
                anyhow::ensure!(
                    summary["wrapped"] == 0,
                    "wrk ran out of distinct deliveries: {summary}"
                );
                ours.push(summary["rps"].as_f64().unwrap_or_default());
                p50s.push(summary["p50_ms"].as_f64().unwrap_or_default());
                p90s.push(summary["p90_ms"].as_f64().unwrap_or_default());
                p99s.push(summary["p99_ms"].as_f64().unwrap_or_default());
                requests += summary["requests"].as_u64().unwrap_or_default() as usize;
                non_2xx += summary["non2xx"].as_u64().unwrap_or_default() as usize;
            }
            let _ = std::fs::remove_file(&file);
            eprintln!("  floor slices {floors:.0?}, ours {ours:.0?}");
            eprintln!(
                "  machine during the floor's slices: {}; during ours: {}",
                machine[0], machine[1]
            );
            let writes = running.state.writer().stats();
            let batches = writes.batches - writes_before.batches;
            eprintln!(
                "  our writes: {} alone, {batches} batches of {:.1} deliveries on average",
                writes.written_alone - writes_before.written_alone,
                (writes.batched - writes_before.batched) as f64 / batches.max(1) as f64
            );
            let run = Run {
                requests,
                non_2xx,
                latencies_ms: vec![median(&mut p50s), median(&mut p90s), median(&mut p99s)],
                floor_latencies_ms: floor_percentiles
                    .iter_mut()
                    .map(|slices| median(slices))
                    .collect(),
            };
            let cfg = format!(
                "pgbench floor_1rt.sql c={concurrency}, {slices} slices of {}s alternating with ours (medians)",
                SLICE.as_secs()
            );
            (median(&mut floors), cfg, median(&mut ours), run)
        } else {
            eprintln!(
                "(wrk not found: using an in-process reqwest load generator, which costs more CPU)"
            );
            eprintln!("floor: floor_1rt.sql at concurrency {concurrency} …");
            let floor_rate = floor(server, concurrency as u32)?;
            let floor_cfg = format!("pgbench floor_1rt.sql c={concurrency} T={SECONDS}s");
            let count = 15_000 * (SECONDS as usize + 3) * if concurrency == 1 { 1 } else { 2 } / 2;
            let batch = Arc::new(deliveries(count, offset)?);
            offset += count;
            let run = replay(url, batch, concurrency).await?;
            (
                floor_rate,
                floor_cfg,
                run.requests as f64 / SECONDS as f64,
                run,
            )
        };
        let _ = running.shutdown().await;
        let stored: i64 = sqlx::query_scalar("select count(*) from onboard.inbox")
            .fetch_one(&pool)
            .await?;
        let jobs: i64 = sqlx::query_scalar("select count(*) from onboard.job")
            .fetch_one(&pool)
            .await?;
        anyhow::ensure!(
            stored == jobs,
            "every stored delivery has its job ({stored} inbox rows, {jobs} jobs)"
        );
        pool.close().await;
        let name = format!("webhook_c{concurrency}");
        figures.push(Figure {
            figure: format!("{name}_rate"),
            value: rate,
            unit: "req/s",
            floor: Some(floor_rate),
            floor_config: floor_cfg.clone(),
            // Issue "Ship it": ≥ 0.6× the floor at 1, ≥ 1.0× at 16 and 64.
            target: if concurrency == 1 {
                "≥0.6×"
            } else {
                "≥1.0×"
            }
            .into(),
        });
        for (i, (p, label)) in [(50.0, "p50"), (90.0, "p90"), (99.0, "p99")]
            .into_iter()
            .enumerate()
        {
            figures.push(Figure {
                figure: format!("{name}_{label}"),
                value: if from_wrk {
                    run.latencies_ms[i]
                } else {
                    percentile(&mut run.latencies_ms, p)
                },
                unit: "ms",
                floor: run.floor_latencies_ms.get(i).copied(),
                floor_config: if run.floor_latencies_ms.is_empty() {
                    String::new()
                } else {
                    "the floor's slices (pgbench -l), median".into()
                },
                target: if concurrency == 64 && label == "p99" {
                    "≤10".into()
                } else {
                    String::new()
                },
            });
        }
        figures.push(Figure {
            figure: format!("{name}_non_2xx"),
            value: run.non_2xx as f64,
            unit: "count",
            floor: None,
            floor_config: String::new(),
            target: "0".into(),
        });
    }
    Ok(figures)
}

/// Diagnostic: the ingress's database statement alone (`inbox::receive` on a pooled
/// connection), from `concurrency` tasks for `SECONDS`, without HTTP, signatures or parsing.
pub async fn database_only(server: &Server, concurrency: usize) -> anyhow::Result<f64> {
    let pool = fresh(server).await?;
    let template = fixture()?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let end = Instant::now() + Duration::from_secs(SECONDS);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (pool, template, next) = (pool.clone(), template.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            while Instant::now() < end {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut event = template.clone();
                event["data"]["id"] = Value::String(format!("org_db{n:09}"));
                let body = serde_json::to_string(&event)?;
                let envelope = onboarding::inbox::ClerkEnvelope::parse(body.as_bytes())?;
                let id = onboarding::SvixId::parse(&format!("msg_db{n:09}"))?;
                let mut conn = pool.acquire().await?;
                let entry = onboarding::inbox::InboxEntry {
                    svix_id: &id,
                    svix_timestamp: 1,
                    svix_signature: "v1,x",
                    payload: &body,
                    envelope: &envelope,
                };
                onboarding::inbox::receive(&mut conn, entry).await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / SECONDS as f64)
}
