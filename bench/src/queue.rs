//! `bench queue`: drain, enqueue, latency and lateness of our queue, each next to its floor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis_core::monitor::Monitor;
use apalis_core::worker::builder::WorkerBuilder;
use jobs::{AnyJob, JobContext, JobError, NewJob, PgBackend, QueueConfig, enqueue, enqueue_many};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Notify;

use crate::{Figure, Server, floor};

const FLOOR_SECONDS: u32 = 5;
/// Single enqueue and its floor alternate in this many slices of this many seconds each.
const ENQUEUE_SLICES: usize = 5;
const ENQUEUE_SLICE_SECONDS: u32 = 2;

/// A fresh, migrated database for one measurement.
async fn fresh(server: &Server) -> anyhow::Result<PgPool> {
    let mut admin = PgConnection::connect(&server.admin_url).await?;
    sqlx::raw_sql("drop database if exists bench_queue with (force)")
        .execute(&mut admin)
        .await?;
    sqlx::raw_sql("create database bench_queue")
        .execute(&mut admin)
        .await?;
    let pool = PgPoolOptions::new()
        // A ping before every checkout costs a round trip per request; a broken connection
        // fails its query instead and the pool replaces it.
        .test_before_acquire(false)
        .max_connections(32)
        .connect(&server.url("bench_queue"))
        .await?;
    jobs::db::migrate(&pool).await?;
    Ok(pool)
}

fn worker_config() -> QueueConfig {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let mut config = QueueConfig::new("default");
    config.batch_size = env("BENCH_BATCH", 200);
    config.max_in_flight = env("BENCH_IN_FLIGHT", 800);
    config.fetchers = env("BENCH_FETCHERS", config.fetchers);
    config
}

/// What a handler does in a drain.
#[derive(Clone, Copy, PartialEq)]
enum Handler {
    Noop,
    /// Completes its own job in its own transaction.
    OwnTransaction,
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
}

fn start_workers<F, Fut>(pool: &PgPool, workers: usize, config: QueueConfig, handler: F) -> Running
where
    F: Fn(AnyJob, JobContext) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), JobError>> + Send + 'static,
{
    let mut monitor = Monitor::new();
    for n in 0..workers {
        let (pool, config, handler) = (pool.clone(), config.clone(), handler.clone());
        monitor = monitor.register(move |_| {
            WorkerBuilder::new(format!("bench-{n}"))
                .backend(PgBackend::<AnyJob>::new(pool.clone(), config.clone()))
                .build(handler.clone())
        });
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let _ = monitor
            .run_with_signal(async move {
                let _ = stopped.await;
                Ok(())
            })
            .await;
    });
    Running { stop, handle }
}

async fn stop(running: Running) {
    let _ = running.stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), running.handle).await;
}

async fn prefill(pool: &PgPool, n: usize) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    for start in (0..n).step_by(5_000) {
        let chunk: Vec<NewJob> = (start..n.min(start + 5_000))
            .map(|i| NewJob::new("noop", json!({"n": i})))
            .collect();
        enqueue_many(&mut conn, &chunk).await?;
    }
    sqlx::raw_sql("vacuum analyze onboard.job")
        .execute(&mut *conn)
        .await?;
    sqlx::raw_sql("checkpoint").execute(&mut *conn).await?;
    Ok(())
}

/// Drains `n` prefilled jobs; jobs/s from the first claim to the last committed completion.
async fn drain(pool: &PgPool, n: usize, workers: usize, handler: Handler) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(Notify::new());
    let start: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select now()").fetch_one(pool).await?;
    let (counter, notify, own_pool) = (done.clone(), all_done.clone(), pool.clone());
    let running = start_workers(pool, workers, worker_config(), move |_job, ctx| {
        let (counter, notify, pool) = (counter.clone(), notify.clone(), own_pool.clone());
        async move {
            if handler == Handler::OwnTransaction {
                let mut tx = pool.begin().await.map_err(JobError::retry)?;
                jobs::complete(&mut tx, ctx.id, ctx.attempt)
                    .await
                    .map_err(JobError::retry)?;
                tx.commit().await.map_err(JobError::retry)?;
            }
            if counter.fetch_add(1, Ordering::Relaxed) + 1 == n {
                notify.notify_one();
            }
            Ok(())
        }
    });
    tokio::time::timeout(Duration::from_secs(300), all_done.notified()).await?;
    loop {
        let left: i64 =
            sqlx::query_scalar("select count(*) from onboard.job where state <> 'completed'")
                .fetch_one(pool)
                .await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select max(finalized_at) from onboard.job")
            .fetch_one(pool)
            .await?;
    stop(running).await;
    let seconds = (end - start).to_std()?.as_secs_f64();
    Ok(n as f64 / seconds)
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (samples.len() as f64 - 1.0)).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

fn micros_now() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

type Samples = Arc<Mutex<Vec<f64>>>;

/// A worker that records, per job, its start time minus the microsecond timestamp `args.t`.
async fn start_sampling(pool: &PgPool, n: usize) -> (Running, Samples) {
    let samples: Samples = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let sink = samples.clone();
    let running = start_workers(pool, 1, worker_config(), move |job, _| {
        let sink = sink.clone();
        async move {
            let t = job.args["t"].as_i64().unwrap_or_default();
            sink.lock()
                .unwrap()
                .push((micros_now() - t) as f64 / 1000.0);
            Ok(())
        }
    });
    // Let the worker reach its idle wait first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    (running, samples)
}

/// Waits for `n` samples, stops the worker, and returns their p50 and p99 in ms.
async fn finish_sampling(
    running: Running,
    samples: Samples,
    n: usize,
) -> anyhow::Result<(f64, f64)> {
    wait_samples(&samples, n).await?;
    stop(running).await;
    let mut samples = samples.lock().unwrap().clone();
    Ok((
        percentile(&mut samples, 50.0),
        percentile(&mut samples, 99.0),
    ))
}

/// Enqueue→handler-start latency on a trickle of `n` jobs `gap` apart, from another connection.
async fn latency(pool: &PgPool, n: usize, gap: Duration) -> anyhow::Result<(f64, f64)> {
    let (running, samples) = start_sampling(pool, n).await;
    let mut producer = pool.acquire().await?;
    for _ in 0..n {
        let started = Instant::now();
        enqueue(
            &mut producer,
            &NewJob::new("ping", json!({"t": micros_now()})),
        )
        .await?;
        tokio::time::sleep(gap.saturating_sub(started.elapsed())).await;
    }
    finish_sampling(running, samples, n).await
}

/// Lateness of scheduled jobs: handler start minus `run_at`.
async fn lateness(pool: &PgPool, n: usize) -> anyhow::Result<(f64, f64)> {
    let (running, samples) = start_sampling(pool, n).await;
    let mut conn = pool.acquire().await?;
    let base = chrono::Utc::now() + chrono::Duration::milliseconds(500);
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| {
            let due = base
                + chrono::Duration::milliseconds(
                    i as i64 * 4000 / n as i64 + (i as i64 * 7919) % 13,
                );
            NewJob::new("due", json!({"t": due.timestamp_micros()})).run_at(due)
        })
        .collect();
    enqueue_many(&mut conn, &jobs).await?;
    finish_sampling(running, samples, n).await
}

async fn wait_samples(samples: &Mutex<Vec<f64>>, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while samples.lock().unwrap().len() < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "jobs did not all start within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// One job per `enqueue` (so per transaction) for `length`; jobs/s. The loop runs in a task on
/// the runtime's worker threads, as a request handler's enqueue does: run by `block_on` on the
/// main thread instead, every reply would cross from the runtime's I/O driver to that thread.
async fn enqueue_single(pool: &PgPool, length: Duration) -> anyhow::Result<f64> {
    let pool = pool.clone();
    tokio::spawn(async move {
        let mut conn = pool.acquire().await?;
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < length {
            enqueue(&mut conn, &NewJob::new("noop", json!({"n": n}))).await?;
            n += 1;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    })
    .await?
}

/// Slices of single enqueue, each alternating with a slice of its floor (`insert1.sql`, one
/// client), so that a machine whose speed drifts slows both alike: (ours, floor), medians.
async fn enqueue_single_alternating(server: &Server, pool: &PgPool) -> anyhow::Result<(f64, f64)> {
    let (mut ours, mut floors) = (Vec::new(), Vec::new());
    for _ in 0..ENQUEUE_SLICES {
        floors.push(floor::insert(server, "insert1", 1, ENQUEUE_SLICE_SECONDS)?);
        ours.push(enqueue_single(pool, Duration::from_secs(ENQUEUE_SLICE_SECONDS.into())).await?);
    }
    eprintln!("  floor slices {floors:.0?}, ours {ours:.0?}");
    Ok((percentile(&mut ours, 50.0), percentile(&mut floors, 50.0)))
}

/// `enqueue_single` on a fresh database, against its floor ([`enqueue_single_alternating`]).
async fn enqueue_single_figure(server: &Server) -> anyhow::Result<Figure> {
    eprintln!("enqueue, one per transaction, alternating with its floor …");
    let pool = fresh(server).await?;
    let (rate, insert1_floor) = enqueue_single_alternating(server, &pool).await?;
    Ok(figure(
        "enqueue_single",
        rate,
        "jobs/s",
        Some(insert1_floor),
        &format!(
            "pgbench insert1.sql c=1, {ENQUEUE_SLICES} slices of {ENQUEUE_SLICE_SECONDS}s alternating with ours (medians)"
        ),
        "≥0.8×",
    ))
}

async fn enqueue_batched(
    pool: &PgPool,
    n: usize,
    chunk: usize,
    producers: usize,
) -> anyhow::Result<f64> {
    let jobs: Arc<Vec<NewJob>> = Arc::new(
        (0..chunk)
            .map(|i| NewJob::new("noop", json!({"n": i})))
            .collect(),
    );
    let per_producer = n / producers / chunk;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let (pool, jobs) = (pool.clone(), jobs.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            for _ in 0..per_producer {
                enqueue_many(&mut conn, &jobs).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((per_producer * producers * chunk) as f64 / started.elapsed().as_secs_f64())
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn figure(
    name: &str,
    value: f64,
    unit: &'static str,
    floor: Option<f64>,
    floor_config: &str,
    target: &str,
) -> Figure {
    Figure {
        figure: name.into(),
        value,
        unit,
        floor,
        floor_config: floor_config.into(),
        target: target.into(),
    }
}

pub async fn run(server: &Server) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "drain") {
        let workers: usize = std::env::var("BENCH_WORKERS")
            .ok()
            .and_then(|w| w.parse().ok())
            .unwrap_or(1);
        for _ in 0..3 {
            let pool = fresh(server).await?;
            prefill(&pool, 20_000).await?;
            let rate = drain(&pool, 20_000, workers, Handler::Noop).await?;
            figures.push(figure("drain_20k", rate, "jobs/s", None, "", ""));
        }
        return Ok(figures);
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "enqueue") {
        for _ in 0..3 {
            figures.push(enqueue_single_figure(server).await?);
        }
        return Ok(figures);
    }
    eprintln!("floor: deq_update.sql, batches of 100, 8 clients, {FLOOR_SECONDS} s …");
    let drain_floor = floor::drain(server, 100, 8, FLOOR_SECONDS)?;
    let drain_cfg = format!("pgbench deq_update.sql n=100 c=8 T={FLOOR_SECONDS}s");
    eprintln!("floor: deq_update.sql, one job per transaction, 8 clients …");
    let single_floor = floor::drain(server, 1, 8, FLOOR_SECONDS)?;
    let single_cfg = format!("pgbench deq_update.sql n=1 c=8 T={FLOOR_SECONDS}s");
    eprintln!("floor: insert100.sql, 1 client …");
    let insert100_floor = floor::insert(server, "insert100", 1, FLOOR_SECONDS)?;

    let workers: usize = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(1);
    for n in [20_000, 100_000] {
        eprintln!("drain {n} no-op jobs …");
        let pool = fresh(server).await?;
        prefill(&pool, n).await?;
        let rate = drain(&pool, n, workers, Handler::Noop).await?;
        figures.push(figure(
            &format!("drain_{}k", n / 1000),
            rate,
            "jobs/s",
            Some(drain_floor),
            &drain_cfg,
            "≥30000, ≥0.6×",
        ));
    }
    let fresh_20k = figures[0].value;

    eprintln!("drain 20k, each completed in its handler's own transaction …");
    let pool = fresh(server).await?;
    prefill(&pool, 20_000).await?;
    let rate = drain(&pool, 20_000, workers, Handler::OwnTransaction).await?;
    figures.push(figure(
        "drain_20k_own_tx",
        rate,
        "jobs/s",
        Some(single_floor),
        &single_cfg,
        "≥0.6×",
    ));

    eprintln!("drain 20k with 1M finished rows present …");
    let pool = fresh(server).await?;
    sqlx::raw_sql(
        "insert into onboard.job (kind, state, attempt, finalized_at)
           select 'done', 'completed', 1, now() from generate_series(1, 1000000);",
    )
    .execute(&pool)
    .await?;
    prefill(&pool, 20_000).await?;
    let rate = drain(&pool, 20_000, workers, Handler::Noop).await?;
    figures.push(figure(
        "drain_20k_1m_history",
        rate,
        "jobs/s",
        Some(fresh_20k),
        "our drain_20k on a fresh table",
        "≥0.9×",
    ));
    figures.push(figure(
        "worker_rss_peak",
        rss_mb(),
        "MB",
        None,
        "bench process VmHWM (producer + worker)",
        "≤50",
    ));

    figures.push(enqueue_single_figure(server).await?);
    let pool = fresh(server).await?;
    let rate = enqueue_batched(&pool, 200_000, 1_000, 1).await?;
    figures.push(figure(
        "enqueue_batched",
        rate,
        "jobs/s",
        Some(insert100_floor),
        &format!("pgbench insert100.sql c=1 T={FLOOR_SECONDS}s"),
        "≥150000",
    ));
    let pool = fresh(server).await?;
    let rate = enqueue_batched(&pool, 200_000, 1_000, 4).await?;
    figures.push(figure(
        "enqueue_batched_4_producers",
        rate,
        "jobs/s",
        Some(insert100_floor),
        &format!("pgbench insert100.sql c=1 T={FLOOR_SECONDS}s"),
        "≥150000",
    ));

    eprintln!("enqueue → start latency, 200 jobs 20 ms apart …");
    let pool = fresh(server).await?;
    let (p50, p99) = latency(&pool, 200, Duration::from_millis(20)).await?;
    figures.push(figure("latency_p50", p50, "ms", None, "", "≤3"));
    figures.push(figure("latency_p99", p99, "ms", None, "", "≤8"));

    eprintln!("lateness of 200 scheduled jobs …");
    let pool = fresh(server).await?;
    let (p50, p99) = lateness(&pool, 200).await?;
    figures.push(figure("lateness_p50", p50, "ms", None, "", ""));
    figures.push(figure("lateness_p99", p99, "ms", None, "", "≤50"));
    Ok(figures)
}
