//! The raw-SQL floors, measured with pgbench on the peers' minimal schemas in the same run.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

use crate::Server;

/// The floors' statements: `bench/floor/` (verbatim copies of the few `peers-bench` files the
/// bench runs), or a full `peers-bench` checkout named by `ONBOARD_PEERS_BENCH`.
pub fn peers_bench() -> PathBuf {
    std::env::var_os("ONBOARD_PEERS_BENCH").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("floor"),
        PathBuf::from,
    )
}

/// Runs psql on `db` with `args` (`-c SQL` or `-f FILE`); returns its trimmed output.
fn run_psql(server: &Server, db: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<String> {
    let out = Command::new(server.bin_dir.join("psql"))
        .args([
            "-qAt",
            "-h",
            &server.host,
            "-p",
            &server.port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
        ])
        .args(args)
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs one SQL command on `db`; returns its output.
pub(crate) fn psql(server: &Server, db: &str, sql: &str) -> anyhow::Result<String> {
    run_psql(server, db, &["-c".as_ref(), sql.as_ref()])
}

/// Runs a SQL file on `db`.
pub(crate) fn psql_file(server: &Server, db: &str, file: &std::path::Path) -> anyhow::Result<()> {
    run_psql(server, db, &["-f".as_ref(), file.as_os_str()]).map(drop)
}

pub(crate) fn fresh_database(server: &Server, db: &str) -> anyhow::Result<()> {
    psql(server, "postgres", &format!("drop database if exists {db}"))?;
    psql(server, "postgres", &format!("create database {db}"))?;
    Ok(())
}

/// Runs `pgbench -n -M prepared -c C -j min(C,2) -T T -D n=N -f script` and returns its TPS.
fn pgbench(
    server: &Server,
    db: &str,
    script: &std::path::Path,
    clients: u32,
    n: u32,
    seconds: u32,
) -> anyhow::Result<f64> {
    pgbench_with(server, db, script, clients, seconds, &format!("n={n}"))
}

/// Runs `pgbench -n -M prepared -c C -j min(C,2) -T T -D define -f script`; returns its TPS.
pub(crate) fn pgbench_with(
    server: &Server,
    db: &str,
    script: &std::path::Path,
    clients: u32,
    seconds: u32,
    define: &str,
) -> anyhow::Result<f64> {
    run_pgbench(server, db, script, clients, seconds, define, None)
}

/// [`pgbench_with`] that also logs every transaction (`-l`) and returns, with the TPS, each
/// transaction's latency in ms.
pub(crate) fn pgbench_latencies(
    server: &Server,
    db: &str,
    script: &std::path::Path,
    clients: u32,
    seconds: u32,
    define: &str,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let dir = std::env::temp_dir().join(format!("onboard-bench-pgbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let prefix = dir.join("txn");
    let tps = run_pgbench(server, db, script, clients, seconds, define, Some(&prefix));
    // One log per pgbench thread: `<prefix>.<pid>[.<thread>]`, a line per transaction whose
    // third field is its latency in µs.
    let mut latencies = Vec::new();
    for file in std::fs::read_dir(&dir)? {
        let text = std::fs::read_to_string(file?.path())?;
        latencies.extend(
            text.lines()
                .filter_map(|line| line.split_whitespace().nth(2)?.parse::<f64>().ok())
                .map(|micros| micros / 1000.0),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((tps?, latencies))
}

fn run_pgbench(
    server: &Server,
    db: &str,
    script: &std::path::Path,
    clients: u32,
    seconds: u32,
    define: &str,
    log_prefix: Option<&std::path::Path>,
) -> anyhow::Result<f64> {
    let threads = clients.min(2);
    let mut command = Command::new(server.bin_dir.join("pgbench"));
    command
        .args([
            "-n",
            "-M",
            "prepared",
            "-h",
            &server.host,
            "-p",
            &server.port.to_string(),
            "-U",
            "postgres",
        ])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &threads.to_string(),
            "-T",
            &seconds.to_string(),
        ]);
    if let Some(prefix) = log_prefix {
        command.arg("-l").arg("--log-prefix").arg(prefix);
    }
    let out = command
        .args(["-D", define, "-f"])
        .arg(script)
        .arg(db)
        .output()
        .context("running pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok());
    match tps {
        Some(tps) if out.status.success() => Ok(tps),
        _ => bail!(
            "pgbench failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The drain floor: `deq_update.sql` with batches of `n` and `clients` clients on a prefilled
/// `schema.sql` table; jobs/s counted from the table afterwards.
pub fn drain(server: &Server, n: u32, clients: u32, seconds: u32) -> anyhow::Result<f64> {
    let dir = peers_bench().join("pgbench");
    let db = "floor_queue";
    fresh_database(server, db)?;
    psql_file(server, db, &dir.join("schema.sql"))?;
    let prefill = if n >= 100 {
        700_000
    } else if n >= 10 {
        250_000
    } else {
        100_000
    };
    psql(
        server,
        db,
        &format!(
            "insert into jobs (queue, args) select 'default', jsonb_build_object('kind','noop','n',g) from generate_series(1,{prefill}) g"
        ),
    )?;
    psql(server, db, "vacuum analyze jobs")?;
    psql(server, db, "checkpoint")?;
    pgbench(server, db, &dir.join("deq_update.sql"), clients, n, seconds)?;
    let done: f64 = psql(
        server,
        db,
        "select count(*) from jobs where state = 'completed'",
    )?
    .parse()?;
    Ok(done / f64::from(seconds))
}

/// The statements of the whole path's floor (`e2e/`): ours, not a `peers-bench` copy.
fn onboarding_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("floor/e2e")
}

/// The whole path's floor: `e2e/onboarding.sql` (every row one onboarding writes, in the fewest
/// statements and commits, with no HTTP and no provider calls) run by `clients` clients for
/// `seconds` on a fresh `e2e/schema.sql`; onboardings/s, counted from the completed sagas.
pub fn onboarding(server: &Server, clients: u32, seconds: u32) -> anyhow::Result<f64> {
    let dir = onboarding_dir();
    let db = "floor_e2e";
    fresh_database(server, db)?;
    psql_file(server, db, &dir.join("schema.sql"))?;
    psql(server, db, "checkpoint")?;
    pgbench(server, db, &dir.join("onboarding.sql"), clients, 1, seconds)?;
    let done: f64 = psql(
        server,
        db,
        "select count(*) from onboarding where state = 'completed'",
    )?
    .parse()?;
    Ok(done / f64::from(seconds))
}

/// The enqueue floor: `insert1.sql` (one row per transaction) or `insert100.sql`; rows/s.
pub fn insert(server: &Server, script: &str, clients: u32, seconds: u32) -> anyhow::Result<f64> {
    let dir = peers_bench().join("pgbench");
    let db = "floor_insert";
    fresh_database(server, db)?;
    psql_file(server, db, &dir.join("schema.sql"))?;
    psql(server, db, "checkpoint")?;
    pgbench(
        server,
        db,
        &dir.join(format!("{script}.sql")),
        clients,
        1,
        seconds,
    )?;
    let rows: f64 = psql(server, db, "select count(*) from jobs")?.parse()?;
    Ok(rows / f64::from(seconds))
}
