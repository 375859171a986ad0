//! A throwaway PostgreSQL cluster started from the machine's own binaries: `onboard dev`, the
//! tests and the benchmarks use it so nothing needs a database set up by hand.
//!
//! `initdb` into a fresh directory, `pg_ctl start` on a free loopback port, `pg_ctl stop` and
//! remove the directory on drop. PostgreSQL refuses to run as root, so when we are root the
//! cluster runs as the `postgres` user in a directory under the system temp dir that it owns.
//! A detached watchdog stops the cluster and removes its directory if this process dies
//! without dropping it (SIGKILL, a test binary's statics that are never dropped).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// How the throwaway cluster trades durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// PostgreSQL's defaults (`fsync=on`, `synchronous_commit=on`): benchmarks and `dev`.
    Full,
    /// `fsync=off`, `synchronous_commit=off`, `full_page_writes=off`: tests.
    Relaxed,
}

/// A running throwaway cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct LocalPostgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    /// The directory to delete on drop (parent of `data_dir`).
    root: PathBuf,
    port: u16,
    as_postgres_user: bool,
    stopped: bool,
}

impl LocalPostgres {
    /// Starts a new cluster. `under` is where the data directory goes when we are not root
    /// (`target/` for `onboard dev`); as root it always goes under the system temp dir.
    pub fn start(under: Option<&Path>, durability: Durability) -> anyhow::Result<Self> {
        Self::start_on(under, durability, free_port()?)
    }

    /// Like [`LocalPostgres::start`], on `port` (tests: a database that comes up after its
    /// clients are started).
    pub fn start_on(
        under: Option<&Path>,
        durability: Durability,
        port: u16,
    ) -> anyhow::Result<Self> {
        let bin_dir = find_bin_dir()?;
        let as_postgres_user = is_root();
        let parent = match under {
            Some(dir) if !as_postgres_user => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                dir.to_path_buf()
            }
            _ => std::env::temp_dir(),
        };
        let root = unique_dir(&parent)?;
        let data_dir = root.join("data");
        if as_postgres_user {
            run(Command::new("chown").arg("postgres:postgres").arg(&root))
                .context("giving the data directory to the postgres user")?;
        }
        let mut pg = LocalPostgres {
            bin_dir,
            data_dir,
            root,
            port,
            as_postgres_user,
            stopped: false,
        };
        pg.spawn_watchdog();
        pg.init_and_start(durability)?;
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The port the cluster listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the cluster's binaries (`pgbench`, `psql`, …).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    fn init_and_start(&mut self, durability: Durability) -> anyhow::Result<()> {
        let initdb = self.bin_dir.join("initdb");
        let mut cmd = self.pg_command(&initdb);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .arg("--locale=C");
        run(&mut cmd).context("initdb failed")?;

        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c max_connections=300 -c shared_buffers=256MB",
            self.port,
            self.root.display()
        );
        if durability == Durability::Relaxed {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let log = self.root.join("postgres.log");
        let mut cmd = self.pg_command(&self.bin_dir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(options)
            .args(["-w", "-t", "60", "start"]);
        if let Err(e) = run(&mut cmd) {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("pg_ctl start failed: {e:#}\n{tail}");
        }
        Ok(())
    }

    /// Restarts the cluster the way a crash would (`pg_ctl restart -m immediate`: every
    /// connection is cut, no checkpoint, crash recovery at start) and waits until it accepts
    /// connections again. Fault tests use it; its settings and port are kept.
    pub fn restart_immediate(&self) -> anyhow::Result<()> {
        let log = self.root.join("postgres.log");
        let mut cmd = self.pg_command(&self.bin_dir.join("pg_ctl"));
        cmd.arg("-D").arg(&self.data_dir).arg("-l").arg(&log);
        cmd.args(["-m", "immediate", "-w", "-t", "60", "restart"]);
        run(&mut cmd).context("pg_ctl restart failed")
    }

    /// Stops the cluster now (also done on drop).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let mut cmd = self.pg_command(&self.bin_dir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.root);
    }

    fn pg_command(&self, program: &Path) -> Command {
        if self.as_postgres_user {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }

    /// A detached shell that outlives us: once our pid is gone it stops the cluster.
    fn spawn_watchdog(&self) {
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let prefix = if self.as_postgres_user {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {prefix}'{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{root}'",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
            data = self.data_dir.display(),
            root = self.root.display(),
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds `initdb` and `pg_ctl`: on PATH, else the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.is_file() && dir.join("pg_ctl").is_file() {
                // Resolve symlinks so sibling binaries (pgbench, postgres) are found too.
                let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
                return Ok(real.parent().map_or(dir, Path::to_path_buf));
            }
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    match candidates.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "no PostgreSQL server binaries found (initdb, pg_ctl) on PATH or under \
             /usr/lib/postgresql/*/bin; install them (Debian/Ubuntu: `apt-get install -y postgresql`) \
             or set DATABASE_URL to an existing database"
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn unique_dir(parent: &Path) -> anyhow::Result<PathBuf> {
    let dir = parent.join(format!(
        "onboard-pg-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} exited with {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
