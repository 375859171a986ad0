//! `bench saga`: what one onboarding costs — jobs, transactions, and wall time on a trickle
//! and on a burst of 1,000 organizations — against the sandbox, through the real worker.
//! The burst lifts the email queue's 2/s cap (Resend's limit), which alone would make 1,000
//! welcome emails take 500 s; the trickle keeps it.

use std::time::{Duration, Instant};

use onboarding::{ClerkOrgId, ClerkUserId, Creator, EmailAddress, OnboardingRequest, Source};
use sqlx::{Connection, PgConnection, PgPool};

use crate::{Figure, Server};

async fn fresh(server: &Server) -> anyhow::Result<PgPool> {
    let mut admin = PgConnection::connect(&server.admin_url).await?;
    sqlx::raw_sql("drop database if exists bench_saga with (force)")
        .execute(&mut admin)
        .await?;
    sqlx::raw_sql("create database bench_saga")
        .execute(&mut admin)
        .await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .test_before_acquire(false)
        .max_connections(40)
        .connect(&server.url("bench_saga"))
        .await?;
    jobs::db::migrate(&pool).await?;
    Ok(pool)
}

fn request(n: usize) -> anyhow::Result<OnboardingRequest> {
    Ok(OnboardingRequest {
        org_id: ClerkOrgId::parse(&format!("org_saga{n:07}"))?,
        name: Some(format!("Org {n}")),
        slug: Some(format!("org-{n}")),
        creator: Creator {
            user_id: Some(ClerkUserId::parse(&format!("user_saga{n:07}"))?),
            email: Some(EmailAddress::parse(&format!("owner{n}@example.com"))?),
            first_name: Some("Ada".into()),
        },
        source: Source::Api,
    })
}

async fn start(pool: &PgPool, n: usize) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    onboarding::start::start(&mut tx, &request(n)?).await?;
    tx.commit().await?;
    Ok(())
}

async fn commits(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "select xact_commit from pg_stat_database where datname = current_database()",
    )
    .fetch_one(pool)
    .await?)
}

async fn unfinished(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from onboard.onboarding where state not in ('completed', 'completed_with_errors', 'compensated', 'compensation_failed')
            or exists (select 1 from onboard.job where state in ('available', 'running', 'scheduled', 'retryable'))",
    )
    .fetch_one(pool)
    .await?)
}

pub async fn run(server: &Server) -> anyhow::Result<Vec<Figure>> {
    let sandbox = sandbox::spawn("127.0.0.1:0".parse()?, sandbox::SandboxConfig::default()).await?;
    let dev = sandbox::SandboxConfig::default();
    let settings = worker::app::ProviderSettings::on_one_host(
        &sandbox.base_url(),
        &dev.twilio_account_sid,
        &dev.twilio_auth_token,
        &dev.resend_api_key,
        &dev.clerk_secret_key,
        worker::provider::DEFAULT_TIMEOUT,
    )?;
    let mut figures = Vec::new();
    for (label, orgs, gap, capped) in [
        ("trickle", 50usize, Some(Duration::from_millis(600)), true),
        ("burst", 1_000, None, false),
    ] {
        eprintln!("saga {label}: {orgs} organizations …");
        let pool = fresh(server).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let registry = worker::app::registry(pool.clone(), settings.providers()?);
        worker::app::configure_queues(&pool).await?;
        if !capped {
            jobs::admin::set_limits(&pool, onboarding::saga::EMAIL_QUEUE, None, None).await?;
        }
        let worker = tokio::spawn(worker::runtime::run(
            pool.clone(),
            registry,
            Default::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        let before = commits(&pool).await?;
        let started = Instant::now();
        let mut per_saga = Vec::new();
        for n in 0..orgs {
            let t = Instant::now();
            start(&pool, n).await?;
            if let Some(gap) = gap {
                // One at a time: wait for this saga to end, then pause.
                loop {
                    let state: String = sqlx::query_scalar(
                        "select state from onboard.onboarding where clerk_org_id = $1",
                    )
                    .bind(format!("org_saga{n:07}"))
                    .fetch_one(&pool)
                    .await?;
                    if onboarding::saga::is_terminal(&state) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                per_saga.push(t.elapsed().as_secs_f64() * 1000.0);
                tokio::time::sleep(gap).await;
            }
        }
        while unfinished(&pool).await? > 0 {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(900),
                "sagas did not finish in 15 min"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wall = started.elapsed().as_secs_f64();
        let transactions = (commits(&pool).await? - before) as f64 / orgs as f64;
        let jobs_per: f64 = sqlx::query_scalar::<_, i64>("select count(*) from onboard.job")
            .fetch_one(&pool)
            .await? as f64
            / orgs as f64;
        let completed: i64 =
            sqlx::query_scalar("select count(*) from onboard.onboarding where state = 'completed'")
                .fetch_one(&pool)
                .await?;
        anyhow::ensure!(
            completed == orgs as i64,
            "{completed} of {orgs} sagas completed"
        );
        let _ = stop.send(());
        let _ = worker.await;
        figures.push(Figure {
            figure: format!("saga_{label}_jobs_per_org"),
            value: jobs_per,
            unit: "jobs",
            floor: None,
            floor_config: String::new(),
            target: String::new(),
        });
        figures.push(Figure {
            figure: format!("saga_{label}_commits_per_org"),
            value: transactions,
            unit: "commits",
            floor: None,
            floor_config: "pg_stat_database.xact_commit delta, all sessions".into(),
            target: String::new(),
        });
        if per_saga.is_empty() {
            figures.push(Figure {
                figure: format!("saga_{label}_wall"),
                value: wall,
                unit: "s",
                floor: None,
                floor_config: format!("{orgs} orgs at once, email cap lifted"),
                target: String::new(),
            });
            figures.push(Figure {
                figure: format!("saga_{label}_rate"),
                value: orgs as f64 / wall,
                unit: "orgs/s",
                floor: None,
                floor_config: String::new(),
                target: String::new(),
            });
        } else {
            per_saga.sort_by(f64::total_cmp);
            figures.push(Figure {
                figure: format!("saga_{label}_p50"),
                value: per_saga[per_saga.len() / 2],
                unit: "ms",
                floor: None,
                floor_config: "start → terminal, one at a time".into(),
                target: String::new(),
            });
            figures.push(Figure {
                figure: format!("saga_{label}_max"),
                value: per_saga[per_saga.len() - 1],
                unit: "ms",
                floor: None,
                floor_config: String::new(),
                target: String::new(),
            });
        }
    }
    sandbox.shutdown().await;
    Ok(figures)
}
