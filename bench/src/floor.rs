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

/// `program` (psql, pgbench) of the server's PostgreSQL, connecting to it as `postgres`.
fn client(server: &Server, program: &str) -> Command {
    let mut command = Command::new(server.bin_dir.join(program));
    command.args([
        "-h",
        &server.host,
        "-p",
        &server.port.to_string(),
        "-U",
        "postgres",
    ]);
    command
}

/// Runs psql on `db` with `args` (`-c SQL` or `-f FILE`); returns its trimmed output.
fn run_psql(server: &Server, db: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<String> {
    let out = client(server, "psql")
        .args(["-qAt", "-d", db])
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

/// One pgbench run: `pgbench -n -M prepared -c C -j min(C,2) -T T -D define -f script db`.
pub(crate) struct Pgbench<'a> {
    pub db: &'a str,
    pub script: PathBuf,
    pub clients: u32,
    pub seconds: u32,
    /// A `-D` variable, `name=value` (the scripts read `:n` or `:payload`).
    pub define: String,
}

impl Pgbench<'_> {
    /// Runs it; its TPS.
    pub(crate) fn tps(&self, server: &Server) -> anyhow::Result<f64> {
        self.run(server, None)
    }

    /// Runs it logging every transaction (`-l`); its TPS and each transaction's latency in ms.
    pub(crate) fn tps_and_latencies(&self, server: &Server) -> anyhow::Result<(f64, Vec<f64>)> {
        let dir =
            std::env::temp_dir().join(format!("onboard-bench-pgbench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let tps = self.run(server, Some(&dir.join("txn")));
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

    fn run(&self, server: &Server, log_prefix: Option<&std::path::Path>) -> anyhow::Result<f64> {
        let threads = self.clients.min(2);
        let mut command = client(server, "pgbench");
        command.args(["-n", "-M", "prepared"]).args([
            "-c",
            &self.clients.to_string(),
            "-j",
            &threads.to_string(),
            "-T",
            &self.seconds.to_string(),
        ]);
        if let Some(prefix) = log_prefix {
            command.arg("-l").arg("--log-prefix").arg(prefix);
        }
        let out = command
            .args(["-D", &self.define, "-f"])
            .arg(&self.script)
            .arg(self.db)
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

    /// Checkpoints `db` (set up before), runs it, and returns the rows `count` counts
    /// afterwards, per second.
    fn rows_per_second(&self, server: &Server, count: &str) -> anyhow::Result<f64> {
        psql(server, self.db, "checkpoint")?;
        self.tps(server)?;
        let rows: f64 = psql(server, self.db, count)?.parse()?;
        Ok(rows / f64::from(self.seconds))
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
    Pgbench {
        db,
        script: dir.join("deq_update.sql"),
        clients,
        seconds,
        define: format!("n={n}"),
    }
    .rows_per_second(
        server,
        "select count(*) from jobs where state = 'completed'",
    )
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
    let grants: Vec<String> = onboarding::permissions::grants()
        .into_iter()
        .map(|(role, permission)| format!("('{role}', '{permission}')"))
        .collect();
    psql(
        server,
        db,
        &format!(
            "insert into default_grant (role, permission) values {}",
            grants.join(", ")
        ),
    )?;
    Pgbench {
        db,
        script: dir.join("onboarding.sql"),
        clients,
        seconds,
        define: "n=1".into(),
    }
    .rows_per_second(
        server,
        "select count(*) from onboarding where state = 'completed'",
    )
}

/// The enqueue floor: `insert1.sql` (one row per transaction) or `insert100.sql`; rows/s.
pub fn insert(server: &Server, script: &str, clients: u32, seconds: u32) -> anyhow::Result<f64> {
    let dir = peers_bench().join("pgbench");
    let db = "floor_insert";
    fresh_database(server, db)?;
    psql_file(server, db, &dir.join("schema.sql"))?;
    Pgbench {
        db,
        script: dir.join(format!("{script}.sql")),
        clients,
        seconds,
        define: "n=1".into(),
    }
    .rows_per_second(server, "select count(*) from jobs")
}
