//! `bench dashboard`: every page and API read of the dashboard against a realistic table —
//! 1M finished and 100k live jobs, 100k onboardings (400k steps), 100k inbox rows — timed
//! over HTTP (p50/p95), then the `EXPLAIN` of each dashboard query whose plan has a
//! sequential scan.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};

use crate::{Figure, Server};

const FINISHED: i64 = 1_000_000;
const LIVE: i64 = 100_000;
const SAGAS: i64 = 100_000;
const SAMPLES: usize = 40;

async fn fresh(server: &Server) -> anyhow::Result<PgPool> {
    let mut admin = PgConnection::connect(&server.admin_url).await?;
    sqlx::raw_sql("drop database if exists bench_dashboard with (force)")
        .execute(&mut admin)
        .await?;
    sqlx::raw_sql("create database bench_dashboard")
        .execute(&mut admin)
        .await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&server.url("bench_dashboard"))
        .await?;
    jobs::db::migrate(&pool).await?;
    Ok(pool)
}

const LOAD: &str = "
insert into onboard.onboarding (clerk_org_id, state, source, request, created_at, updated_at)
select 'org_b' || n,
       case when n % 50 = 0 then 'compensated' when n % 97 = 0 then 'completed_with_errors'
            when n % 991 = 0 then 'compensation_failed' when n > $3 - 200 then 'running' else 'completed' end,
       'webhook',
       jsonb_build_object('org_id', 'org_b' || n, 'name', 'Org ' || n, 'slug', 'org-' || n,
                          'creator', jsonb_build_object('user_id', 'user_b' || n, 'email', 'owner' || n || '@example.com')),
       now() - (($3 - n) * interval '1 second'), now() - (($3 - n) * interval '1 second')
  from generate_series(1, $3) n;

insert into onboard.onboarding_step (onboarding_id, name, position, state, attempts, output)
select o.id, s.name, s.position, 'done', 1, '{}'
  from onboard.onboarding o,
       (values ('create_org_record', 1), ('default_permissions', 2), ('twilio_subaccount', 3), ('welcome_email', 4)) s(name, position);

insert into onboard.inbox (svix_id, event_type, payload, svix_timestamp, svix_signature, ignored, received_at)
select 'msg_b' || n, case when n % 3 = 0 then 'organization.created' else 'user.created' end,
       jsonb_build_object('type', 'user.created', 'data', jsonb_build_object('id', 'user_b' || n,
                          'email_addresses', jsonb_build_array(jsonb_build_object('email_address', 'u' || n || '@example.com')))),
       extract(epoch from now())::bigint, 'v1,x', n % 7 = 0, now() - (($3 - n) * interval '1 second')
  from generate_series(1, $3) n;

insert into onboard.job (queue, kind, args, state, attempt, max_attempts, run_at, created_at, attempted_at, finalized_at, errors)
select case when n % 4 = 0 then 'email' when n % 4 = 1 then 'clerk' else 'onboarding' end,
       case when n % 4 = 1 then 'clerk.user.created' else 'onboarding.twilio_subaccount' end,
       case when n % 4 = 1 then jsonb_build_object('inbox_id', n % $3 + 1, 'svix_id', 'msg_b' || n)
            else jsonb_build_object('onboarding_id', n % $3 + 1) end,
       (case when n % 20 = 0 then 'discarded' when n % 33 = 0 then 'cancelled' else 'completed' end)::onboard.job_state,
       1, 11, now() - (n % 172800) * interval '1 second', now() - (n % 172800) * interval '1 second',
       now() - (n % 172800) * interval '1 second', now() - (n % 172800) * interval '1 second' + interval '50 milliseconds',
       case when n % 20 = 0 then array[jsonb_build_object('attempt', 1, 'message', 'permanent provider error 400')] else '{}' end
  from generate_series(1, $1) n;

insert into onboard.job (queue, kind, args, state, attempt, max_attempts, run_at, created_at)
select case when n % 4 = 0 then 'email' when n % 4 = 1 then 'clerk' else 'onboarding' end,
       case when n % 4 = 1 then 'clerk.user.created' else 'onboarding.welcome_email' end,
       case when n % 4 = 1 then jsonb_build_object('inbox_id', n % $3 + 1, 'svix_id', 'msg_l' || n)
            else jsonb_build_object('onboarding_id', n % $3 + 1) end,
       (case when n % 10 = 0 then 'scheduled' when n % 10 = 1 then 'retryable' else 'available' end)::onboard.job_state,
       0, 11, now() + (case when n % 10 < 2 then interval '1 hour' else interval '0' end) - (n % 3600) * interval '1 second',
       now() - (n % 3600) * interval '1 second'
  from generate_series(1, $2) n;
";

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// The dashboard's queries as run for these pages (representative parameters), for `EXPLAIN`.
const QUERIES: [(&str, &str); 19] = [
    (
        "jobs, newest first",
        "select id from onboard.job order by id desc limit 50",
    ),
    (
        "jobs by state",
        "select id from onboard.job where state = 'discarded'::onboard.job_state order by id desc limit 50",
    ),
    (
        "jobs by queue and state",
        "select id from onboard.job where state = 'available'::onboard.job_state and queue = 'email' order by id desc limit 50",
    ),
    (
        "an org's job ids",
        "select j.id from onboard.onboarding s join onboard.job j on j.args ? 'onboarding_id' and (j.args->>'onboarding_id')::bigint = s.id where s.clerk_org_id = 'org_b777' union all select id from onboard.job where args ? 'clerk_org_id' and args->>'clerk_org_id' = 'org_b777' limit 10000",
    ),
    (
        "overview last hour, per minute",
        "select (extract(epoch from now() - finalized_at) / 60)::int, count(*) from onboard.job where state in ('completed', 'discarded', 'cancelled') and finalized_at is not null and finalized_at > now() - interval '1 hour' group by 1",
    ),
    (
        "live args search",
        "select id from onboard.job where true and (state = 'available' or state in ('scheduled', 'retryable') or state = 'running') and strpos(args::text, 'msg_l777') > 0 order by id + 0 desc limit 50",
    ),
    (
        "onboardings by name",
        "select id from onboard.onboarding where (request->>'name' ilike '%Org 777%' or request->>'slug' ilike '%Org 777%') order by id desc limit 50",
    ),
    (
        "overview live counts",
        "select queue, count(*) from (select queue from onboard.job where state = 'scheduled' order by queue, run_at limit 10000) c group by queue",
    ),
    (
        "overview running count",
        "select queue, count(*) from (select queue from onboard.job where state = 'running' order by queue, lease_expires_at limit 10000) c group by queue",
    ),
    (
        "not terminal alert",
        "select id from onboard.onboarding where state in ('running', 'compensating') and created_at < now() - interval '10 minutes' order by id desc limit 20",
    ),
    (
        "queues",
        "with recursive n as ((select queue from onboard.job where state = 'available' order by queue limit 1) union all select (select j.queue from onboard.job j where j.state = 'available' and j.queue > n.queue order by j.queue limit 1) from n where n.queue is not null) select n.queue, (select count(*) from (select 1 from onboard.job where state = 'available' and queue = n.queue and run_at <= now() limit 1000) c) from n where n.queue is not null",
    ),
    (
        "oldest available, per queue",
        "select id, queue, extract(epoch from now() - run_at)::float8 from onboard.job where state = 'available' and queue = 'email' and run_at <= now() order by queue, priority, run_at, id limit 1",
    ),
    (
        "oldest due waiting, per queue",
        "select id, queue, extract(epoch from now() - run_at)::float8 from onboard.job where state in ('scheduled', 'retryable') and queue = 'email' and run_at <= now() order by queue, run_at limit 1",
    ),
    (
        "overview capped finished",
        "select count(*) from (select 1 from onboard.job where state = 'completed'::onboard.job_state and finalized_at is not null limit 10000) c",
    ),
    (
        "overview last hour",
        "select count(*) from onboard.job where state in ('completed', 'discarded', 'cancelled') and finalized_at is not null and finalized_at > now() - interval '1 hour'",
    ),
    (
        "onboardings by state (capped)",
        "select count(*) from (select 1 from onboard.onboarding where state = 'compensating' order by state, id limit 10000) c",
    ),
    (
        "saga alerts",
        "select id from onboard.onboarding where state = 'compensation_failed' order by id desc limit 20",
    ),
    (
        "a saga's jobs",
        "select id from onboard.job where args ? 'onboarding_id' and (args->>'onboarding_id')::bigint = 777 order by id",
    ),
    (
        "inbox with its jobs",
        "select i.id, j.id from onboard.inbox i left join lateral (select id from onboard.job where args ? 'inbox_id' and (args->>'inbox_id')::bigint = i.id order by id desc limit 1) j on true order by i.id desc limit 50",
    ),
];

/// Loads the data, serves the dashboard, times each read.
pub async fn run(server: &Server) -> anyhow::Result<Vec<Figure>> {
    let pool = fresh(server).await?;
    let loading = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        LOAD.replace("$1", &FINISHED.to_string())
            .replace("$2", &LIVE.to_string())
            .replace("$3", &SAGAS.to_string()),
    ))
    .execute(&pool)
    .await?;
    sqlx::raw_sql("vacuum analyze").execute(&pool).await?;
    // The load and the vacuum leave a gigabyte of dirty buffers: write them now, so that the
    // checkpoint they would set off does not land in the middle of the timed reads.
    sqlx::raw_sql("checkpoint").execute(&pool).await?;
    eprintln!(
        "loaded and vacuumed in {:.0} s",
        loading.elapsed().as_secs_f64()
    );

    dashboard::account::add(
        &pool,
        "bench",
        dashboard::account::Role::Operator,
        "bench password 123",
    )
    .await?;
    let app = dashboard::router(dashboard::DashboardState::new(
        pool.clone(),
        dashboard::Settings::default(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    // The login form's CSRF token (double submit: its cookie and its hidden field).
    let form = http.get(format!("{base}/login")).send().await?;
    let form_cookie = form
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("the login form set no cookie"))?
        .to_owned();
    let page = form.text().await?;
    let field = "name=\"login_csrf\" value=\"";
    let token = page
        .find(field)
        .and_then(|start| page[start + field.len()..].split('"').next())
        .ok_or_else(|| anyhow::anyhow!("the login form has no CSRF field"))?
        .to_owned();
    let login = http
        .post(format!("{base}/login"))
        .header("cookie", form_cookie)
        .form(&[
            ("name", "bench"),
            ("password", "bench password 123"),
            ("login_csrf", token.as_str()),
        ])
        .send()
        .await?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("login failed"))?
        .to_owned();
    let some_job: i64 = sqlx::query_scalar("select max(id) from onboard.job")
        .fetch_one(&pool)
        .await?;
    let reads = [
        "/".to_owned(),
        "/jobs".into(),
        "/jobs?state=discarded".into(),
        "/jobs?queue=email&state=available".into(),
        "/jobs?org=org_b777".into(),
        "/jobs?q=msg_l777".into(),
        format!("/jobs?before={}", some_job - 500_000),
        format!("/jobs/{some_job}"),
        "/queues".into(),
        "/onboardings".into(),
        "/onboardings?state=compensated".into(),
        "/onboardings?q=org_b777".into(),
        "/onboardings?q=Org%20777".into(),
        "/onboardings/777".into(),
        "/inbox".into(),
        "/workers".into(),
        "/audit".into(),
        "/api/overview".into(),
        "/api/jobs".into(),
        "/api/jobs?org=org_b777".into(),
        format!("/api/jobs/{some_job}"),
        "/api/onboardings".into(),
        "/api/onboardings/777".into(),
        "/api/queues".into(),
        "/api/inbox".into(),
        "/api/rejected".into(),
        "/api/workers".into(),
    ];
    let mut figures = Vec::new();
    for path in &reads {
        let mut times = Vec::with_capacity(SAMPLES);
        for i in 0..SAMPLES + 3 {
            let t = Instant::now();
            let r = http
                .get(format!("{base}{path}"))
                .header("cookie", &cookie)
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "{path} answered {}", r.status());
            r.bytes().await?;
            if i >= 3 {
                times.push(t.elapsed());
            }
        }
        times.sort();
        eprintln!(
            "{path}: p50 {:.1} ms, p95 {:.1} ms",
            quantile(&times, 0.5),
            quantile(&times, 0.95)
        );
        for (q, name) in [(0.5, "p50"), (0.95, "p95")] {
            figures.push(Figure {
                figure: format!("{path} {name}"),
                value: quantile(&times, q),
                unit: "ms",
                floor: None,
                floor_config: String::new(),
                target: if name == "p95" {
                    "<= 50 ms".into()
                } else {
                    String::new()
                },
            });
        }
    }
    println!();
    for (name, sql) in QUERIES {
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "explain (analyze, costs off) {sql}"
        )))
        .fetch_all(&pool)
        .await?;
        let plan = plan.join("\n");
        let took = plan.lines().last().unwrap_or_default().trim().to_owned();
        if plan.contains("Seq Scan") {
            println!("-- {name}: not an index scan ({took})\n{sql}\n{plan}\n");
        } else {
            println!("-- {name}: index scans only ({took})");
        }
    }
    Ok(figures)
}
