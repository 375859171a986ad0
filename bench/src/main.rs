//! Benchmarks, run by hand: `cargo run --release -p bench -- queue` (or `-- ingress`, `-- e2e`).
//!
//! Each run starts its own PostgreSQL (unless `DATABASE_URL` is set), measures the raw-SQL floor
//! with pgbench in the same run, and prints our figures as ratios to it: a table, then one JSON
//! line per figure.

mod dashboard;
mod e2e;
mod floor;
mod ingress;
mod machine;
mod queue;
mod saga;

use jobs::local_pg::{Durability, LocalPostgres};

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    pub figure: String,
    pub value: f64,
    pub unit: &'static str,
    pub floor: Option<f64>,
    pub floor_config: String,
    pub target: String,
}

impl Figure {
    fn ratio(&self) -> Option<f64> {
        self.floor.filter(|f| *f > 0.0).map(|f| self.value / f)
    }
}

/// The server the bench measures: ours, or the one in `DATABASE_URL`.
pub struct Server {
    pub admin_url: String,
    pub host: String,
    pub port: u16,
    pub bin_dir: std::path::PathBuf,
    _pg: Option<LocalPostgres>,
}

impl Server {
    fn start() -> anyhow::Result<Self> {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            let parsed: Vec<&str> = url.split(['@', ':', '/']).collect();
            let host = parsed.get(4).copied().unwrap_or("127.0.0.1").to_owned();
            let port = parsed.get(5).and_then(|p| p.parse().ok()).unwrap_or(5432);
            return Ok(Server {
                admin_url: url,
                host,
                port,
                bin_dir: jobs::local_pg::find_bin_dir()?,
                _pg: None,
            });
        }
        let pg = LocalPostgres::start(None, Durability::Full)?;
        Ok(Server {
            admin_url: pg.url("postgres"),
            host: "127.0.0.1".into(),
            port: pg.port(),
            bin_dir: pg.bin_dir().to_path_buf(),
            _pg: Some(pg),
        })
    }

    /// The URL of another database on the same server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@{}:{}/{database}", self.host, self.port)
    }
}

fn print(bench: &str, figures: &[Figure]) {
    println!();
    println!(
        "{:<26} {:>14} {:<8} {:>14} {:>7}  {:<12} floor config",
        "figure", "value", "unit", "floor", "ratio", "target"
    );
    for f in figures {
        println!(
            "{:<26} {:>14.1} {:<8} {:>14} {:>7}  {:<12} {}",
            f.figure,
            f.value,
            f.unit,
            f.floor.map_or("-".into(), |v| format!("{v:.1}")),
            f.ratio().map_or("-".into(), |r| format!("{r:.2}")),
            f.target,
            f.floor_config,
        );
    }
    println!();
    for f in figures {
        let line = serde_json::json!({
            "bench": bench,
            "figure": f.figure,
            "value": (f.value * 10.0).round() / 10.0,
            "unit": f.unit,
            "floor": f.floor.map(|v| (v * 10.0).round() / 10.0),
            "floor_config": f.floor_config,
            "ratio": f.ratio().map(|r| (r * 1000.0).round() / 1000.0),
            "target": f.target,
        });
        println!("{line}");
    }
}

const USAGE: &str =
    "usage: cargo run --release -p bench -- [queue|ingress|ingress-db|e2e|saga|dashboard]

  queue       drain, enqueue, latency and lateness of the job queue, next to pgbench floors
  ingress     the webhook under wrk at concurrency 1, 16 and 64, next to the one-statement floor
  ingress-db  the inbox statement alone, at the same concurrencies
  e2e         webhook to completed onboarding: a burst of 1,000 and a trickle of 50/s
  saga        one onboarding's jobs, transactions and wall time, through the worker alone
  dashboard   every dashboard page and API read on 1M finished and 100k live jobs

Each starts its own PostgreSQL unless DATABASE_URL is set. The README lists each bench's
variables.";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "queue".into());
    if matches!(which.as_str(), "-h" | "--help" | "help") {
        println!("{USAGE}");
        return Ok(());
    }
    // PostgreSQL starts once the name is known to be a bench.
    let server = Server::start;
    match which.as_str() {
        "queue" => {
            let figures = queue::run(&server()?).await?;
            print("queue", &figures);
        }
        "ingress" => {
            let figures = ingress::run(&server()?).await?;
            print("ingress", &figures);
        }
        "ingress-db" => {
            let server = server()?;
            for concurrency in [1, 16, 64] {
                let rate = ingress::database_only(&server, concurrency).await?;
                println!("inbox::receive alone, concurrency {concurrency}: {rate:.0}/s");
            }
        }
        "e2e" => {
            let figures = e2e::run(&server()?).await?;
            print("e2e", &figures);
        }
        "saga" => {
            let figures = saga::run(&server()?).await?;
            print("saga", &figures);
        }
        "dashboard" => {
            let figures = dashboard::run(&server()?).await?;
            print("dashboard", &figures);
        }
        other => {
            eprintln!("unknown bench `{other}`\n\n{USAGE}");
            std::process::exit(2);
        }
    }
    Ok(())
}
