//! The invariants, checked once the system is quiet, against the database, the sandbox's
//! ledger and sub-accounts, and what the driver was answered. Each check prints how many
//! items it looked at and, when it fails, the rows that show why.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use futures::StreamExt;
use sandbox::{AccountStatus, Action, Effect, SubAccountInfo};
use serde_json::Value;

use crate::driver::Deliveries;
use crate::plan::{Email, Plan, Twilio};
use crate::roles::Stack;
use crate::settle::Settled;

/// Evidence lines printed per failed check, at most.
const EVIDENCE: usize = 12;

/// One invariant's verdict.
#[derive(Debug)]
pub struct Check {
    name: &'static str,
    checked: usize,
    failures: Vec<String>,
}

impl Check {
    fn new(name: &'static str) -> Check {
        Check {
            name,
            checked: 0,
            failures: Vec::new(),
        }
    }

    fn item(&mut self, ok: bool, evidence: impl FnOnce() -> String) {
        self.checked += 1;
        if !ok {
            self.failures.push(evidence());
        }
    }
}

/// Every check and a few totals.
#[derive(Debug, Default)]
pub struct Report {
    checks: Vec<Check>,
    stats: Vec<String>,
}

impl Report {
    /// True when no check failed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.failures.is_empty())
    }

    /// Adds a check decided elsewhere: `failures` are its evidence lines.
    pub fn push(&mut self, name: &'static str, checked: usize, failures: Vec<String>) {
        self.checks.push(Check {
            name,
            checked,
            failures,
        });
    }

    /// The failed checks' names.
    pub fn failed_names(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|c| !c.failures.is_empty())
            .map(|c| c.name)
            .collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.stats {
            writeln!(f, "{line}")?;
        }
        writeln!(f, "invariants:")?;
        for check in &self.checks {
            let verdict = if check.failures.is_empty() {
                "PASS"
            } else {
                "FAIL"
            };
            writeln!(
                f,
                "  {verdict}  {} ({} checked, {} failed)",
                check.name,
                check.checked,
                check.failures.len()
            )?;
            for line in check.failures.iter().take(EVIDENCE) {
                writeln!(f, "          {line}")?;
            }
            if check.failures.len() > EVIDENCE {
                writeln!(f, "          … {} more", check.failures.len() - EVIDENCE)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, sqlx::FromRow)]
struct SagaRow {
    id: i64,
    clerk_org_id: String,
    state: String,
}

#[derive(Debug, sqlx::FromRow)]
struct StepRow {
    onboarding_id: i64,
    name: String,
    state: String,
    attempts: i32,
    last_error: Option<String>,
    output: Value,
}

#[derive(Debug, sqlx::FromRow)]
struct JobRow {
    id: i64,
    kind: String,
    state: String,
    attempt: i32,
    max_attempts: i32,
    onboarding_id: Option<i64>,
    run_at: String,
    lease: Option<String>,
    last_error: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct OrgRow {
    clerk_org_id: String,
    onboarding_status: String,
    twilio_subaccount_sid: Option<String>,
    grants: i64,
}

/// Everything the checks read from the database.
struct Db {
    inbox: HashMap<String, i64>,
    /// Inbox rows and the states of their `clerk.*` jobs.
    events: Vec<(i64, String, String, bool, Vec<String>)>,
    sagas: Vec<SagaRow>,
    steps: HashMap<i64, Vec<StepRow>>,
    jobs: HashMap<i64, Vec<JobRow>>,
    orgs: HashMap<String, OrgRow>,
    users: HashSet<String>,
    memberships: HashMap<(String, String), String>,
    overdue: Vec<(i64, String, String, String)>,
    /// `offboarding.close_org` job states by org.
    offboards: HashMap<String, Vec<String>>,
    job_states: Vec<(String, String, i64)>,
    lease_expired: i64,
}

async fn load(pool: &sqlx::PgPool) -> Result<Db, sqlx::Error> {
    let inbox = sqlx::query_as::<_, (String, i64)>(
        "select svix_id, count(*) from onboard.inbox group by svix_id",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let events = sqlx::query_as::<_, (i64, String, String, bool, Vec<String>)>(
        "select i.id, i.svix_id, i.event_type, i.ignored,
                coalesce(array_agg(j.state::text) filter (where j.id is not null), '{}')
           from onboard.inbox i
           left join onboard.job j on j.kind like 'clerk.%' and (j.args->>'inbox_id')::bigint = i.id
          group by i.id",
    )
    .fetch_all(pool)
    .await?;
    let sagas = sqlx::query_as::<_, SagaRow>(
        "select id, clerk_org_id, state from onboard.onboarding order by id",
    )
    .fetch_all(pool)
    .await?;
    let mut steps: HashMap<i64, Vec<StepRow>> = HashMap::new();
    for step in sqlx::query_as::<_, StepRow>(
        "select onboarding_id, name, state, attempts, last_error, output
           from onboard.onboarding_step order by onboarding_id, position",
    )
    .fetch_all(pool)
    .await?
    {
        steps.entry(step.onboarding_id).or_default().push(step);
    }
    let mut jobs: HashMap<i64, Vec<JobRow>> = HashMap::new();
    for job in sqlx::query_as::<_, JobRow>(
        "select id, kind, state::text as state, attempt, max_attempts,
                (args->>'onboarding_id')::bigint as onboarding_id,
                round(extract(epoch from run_at - now())::numeric, 1)::text || ' s from now' as run_at,
                case when lease_owner is not null
                     then lease_owner || ' until ' || round(extract(epoch from lease_expires_at - now())::numeric, 1)::text || ' s from now' end as lease,
                left(errors[array_length(errors, 1)]::text, 300) as last_error
           from onboard.job where args ? 'onboarding_id' order by id",
    )
    .fetch_all(pool)
    .await?
    {
        jobs.entry(job.onboarding_id.unwrap_or_default())
            .or_default()
            .push(job);
    }
    let orgs = sqlx::query_as::<_, OrgRow>(
        "select o.clerk_org_id, o.onboarding_status, o.twilio_subaccount_sid,
                (select count(*) from onboard.role_permission p where p.organization_id = o.id) as grants
           from onboard.organization o",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|org| (org.clerk_org_id.clone(), org))
    .collect();
    let users = sqlx::query_scalar::<_, String>("select clerk_user_id from onboard.app_user")
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
    let memberships = sqlx::query_as::<_, (String, String, String)>(
        "select o.clerk_org_id, m.clerk_user_id, m.state
           from onboard.membership m join onboard.organization o on o.id = m.organization_id
          where m.clerk_user_id is not null",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(org, user, state)| ((org, user), state))
    .collect();
    let overdue = sqlx::query_as::<_, (i64, String, String, String)>(
        "select id, kind, coalesce(lease_owner, ''), (now() - lease_expires_at)::text
           from onboard.job where state = 'running' and lease_expires_at < now()",
    )
    .fetch_all(pool)
    .await?;
    let mut offboards: HashMap<String, Vec<String>> = HashMap::new();
    for (org, state) in sqlx::query_as::<_, (String, String)>(
        "select coalesce(args->>'clerk_org_id', ''), state::text from onboard.job
          where kind = 'offboarding.close_org'",
    )
    .fetch_all(pool)
    .await?
    {
        offboards.entry(org).or_default().push(state);
    }
    let job_states = sqlx::query_as::<_, (String, String, i64)>(
        "select kind, state::text, count(*) from onboard.job group by 1, 2 order by 1, 2",
    )
    .fetch_all(pool)
    .await?;
    let lease_expired = sqlx::query_scalar::<_, i64>(
        "select count(*) from onboard.job j, unnest(j.errors) e where e->>'kind' = 'lease_expired'",
    )
    .fetch_one(pool)
    .await?;
    Ok(Db {
        inbox,
        events,
        sagas,
        steps,
        jobs,
        orgs,
        users,
        memberships,
        overdue,
        offboards,
        job_states,
        lease_expired,
    })
}

/// What the sandbox saw.
struct Providers {
    ledger: Vec<Effect>,
    subaccounts: Vec<SubAccountInfo>,
    /// `public_metadata.onboarding.state` of each organization the sandbox's Clerk knows.
    metadata: HashMap<String, Option<String>>,
}

async fn providers(stack: &Stack, plan: &Plan) -> Providers {
    let get = |path: String| {
        let http = stack.http.clone();
        let url = format!("{}{path}", stack.sandbox_url);
        async move {
            http.get(&url)
                .bearer_auth(sandbox::SandboxConfig::DEV_CLERK_SECRET_KEY)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"))
                .json::<Value>()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        }
    };
    let ledger = serde_json::from_value(get("/sandbox/ledger".into()).await["effects"].take())
        .expect("the ledger's effects");
    let subaccounts =
        serde_json::from_value(get("/sandbox/subaccounts".into()).await["subaccounts"].take())
            .expect("the sandbox's sub-accounts");
    let metadata = futures::stream::iter(&plan.orgs)
        .map(|org| {
            let get = &get;
            async move {
                let body = get(format!("/v1/organizations/{}", org.id)).await;
                let state = body["public_metadata"]["onboarding"]["state"]
                    .as_str()
                    .map(str::to_owned);
                (org.id.clone(), state)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    Providers {
        ledger,
        subaccounts,
        metadata,
    }
}

fn is_terminal(state: &str) -> bool {
    matches!(
        state,
        "completed" | "completed_with_errors" | "compensated" | "compensation_failed"
    )
}

fn saga_evidence(db: &Db, saga: &SagaRow) -> String {
    let steps: Vec<String> = db
        .steps
        .get(&saga.id)
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "{}={}({}){}",
                s.name,
                s.state,
                s.attempts,
                s.last_error
                    .as_deref()
                    .map(|e| format!(" [{}]", e.chars().take(120).collect::<String>()))
                    .unwrap_or_default()
            )
        })
        .collect();
    let jobs: Vec<String> = db
        .jobs
        .get(&saga.id)
        .into_iter()
        .flatten()
        .map(|j| {
            format!(
                "job {} {} {} attempt {}/{} run_at {}{}{}",
                j.id,
                j.kind,
                j.state,
                j.attempt,
                j.max_attempts,
                j.run_at,
                j.lease
                    .as_deref()
                    .map(|l| format!(" lease {l}"))
                    .unwrap_or_default(),
                j.last_error
                    .as_deref()
                    .map(|e| format!(" last error {e}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    format!(
        "saga {} of {} is {}; steps: {}; jobs: {}",
        saga.id,
        saga.clerk_org_id,
        saga.state,
        steps.join(", "),
        jobs.join(" | ")
    )
}

fn successful(effect: &Effect) -> bool {
    (200..300).contains(&effect.status)
}

/// Runs every check.
pub async fn check(
    stack: &Stack,
    plan: &Plan,
    deliveries: &Deliveries,
    settled: &Settled,
) -> Report {
    let db = load(&stack.pool).await.expect("read the database");
    let providers = providers(stack, plan).await;
    let mut report = Report::default();

    // Indexes: which org a sub-account name or a recipient belongs to.
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut by_recipient: HashMap<String, usize> = HashMap::new();
    for (i, org) in plan.orgs.iter().enumerate() {
        by_name.insert(org.friendly_name(), i);
        for recipient in org.recipients() {
            by_recipient.insert(recipient, i);
        }
    }
    let n = plan.orgs.len();
    let mut creates: Vec<Vec<&Effect>> = vec![Vec::new(); n];
    let mut sends: Vec<Vec<&Effect>> = vec![Vec::new(); n];
    for effect in &providers.ledger {
        match effect.action {
            Action::CreateSubaccount => {
                if let Some(&i) = by_name.get(&effect.key) {
                    creates[i].push(effect);
                }
            }
            Action::SendEmail => {
                if let Some(&i) = by_recipient.get(&effect.key.to_lowercase()) {
                    sends[i].push(effect);
                }
            }
            _ => {}
        }
    }
    let mut open_accounts: Vec<Vec<&SubAccountInfo>> = vec![Vec::new(); n];
    for account in &providers.subaccounts {
        if account.status != AccountStatus::Closed
            && let Some(&i) = by_name.get(&account.friendly_name)
        {
            open_accounts[i].push(account);
        }
    }
    let sagas: HashMap<&str, &SagaRow> = db
        .sagas
        .iter()
        .map(|s| (s.clerk_org_id.as_str(), s))
        .collect();

    // Totals.
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for saga in &db.sagas {
        *by_state.entry(saga.state.as_str()).or_default() += 1;
    }
    report.stats.push(format!("sagas by state: {by_state:?}"));
    let mut ledger_counts: BTreeMap<String, usize> = BTreeMap::new();
    for effect in &providers.ledger {
        *ledger_counts
            .entry(format!("{:?} {}", effect.action, effect.status))
            .or_default() += 1;
    }
    report.stats.push(format!("ledger: {ledger_counts:?}"));
    report.stats.push(format!(
        "jobs: {}; attempts lost to an expired lease: {}",
        db.job_states
            .iter()
            .map(|(kind, state, count)| format!("{kind} {state} {count}"))
            .collect::<Vec<_>>()
            .join(", "),
        db.lease_expired
    ));

    // 1. Svix would retry anything else: every delivery must be accepted in the end.
    let mut check = Check::new("every delivery was answered 2xx in the end");
    for delivery in &deliveries.all {
        let message = &plan.messages[delivery.message];
        check.item(delivery.accepted, || {
            format!(
                "{} {} answered {:?}",
                message.svix_id, message.event_type, delivery.answers
            )
        });
    }
    report.checks.push(check);

    // 2. Dedup and durability of the inbox.
    let mut check = Check::new("every 2xx delivery has exactly one inbox row");
    let accepted: HashSet<&str> = deliveries
        .all
        .iter()
        .filter(|d| d.accepted)
        .map(|d| plan.messages[d.message].svix_id.as_str())
        .collect();
    for svix_id in &accepted {
        let rows = db.inbox.get(*svix_id).copied().unwrap_or(0);
        check.item(rows == 1, || format!("{svix_id}: {rows} inbox rows"));
    }
    let planned: HashSet<&str> = plan.messages.iter().map(|m| m.svix_id.as_str()).collect();
    for svix_id in db.inbox.keys() {
        check.item(planned.contains(svix_id.as_str()), || {
            format!("{svix_id}: an inbox row nobody sent")
        });
    }
    report.checks.push(check);

    // 3. Nothing lost between the inbox and the directory or the saga.
    let mut check = Check::new("every stored event's job completed exactly once");
    for (id, svix_id, event_type, ignored, states) in &db.events {
        let ok = if *ignored {
            states.is_empty()
        } else {
            states.len() == 1 && states[0] == "completed"
        };
        check.item(ok, || {
            format!("inbox {id} {svix_id} {event_type} (ignored: {ignored}): jobs {states:?}")
        });
    }
    report.checks.push(check);

    // A deleted organization whose deletion was applied first is never onboarded.
    let mut check = Check::new("every organization not deleted has one saga");
    for org in plan.orgs.iter().filter(|o| !o.deleted) {
        check.item(sagas.contains_key(org.id.as_str()), || {
            format!("{} ({}) has no saga", org.id, org.slug)
        });
    }
    report.checks.push(check);

    // 4. Nothing stuck.
    let mut check = Check::new("every saga is terminal");
    for saga in &db.sagas {
        check.item(is_terminal(&saga.state), || saga_evidence(&db, saga));
    }
    report.checks.push(check);

    // 5. The magic decides the outcome, whatever the faults.
    let mut check = Check::new("every saga ended as its providers' answers say");
    for (i, org) in plan.orgs.iter().enumerate() {
        let Some(saga) = sagas.get(org.id.as_str()) else {
            continue;
        };
        if !is_terminal(&saga.state) {
            continue;
        }
        let sent = sends[i].iter().any(|e| successful(e));
        let refused = sends[i].iter().any(|e| e.status == 422);
        let expected = match org.twilio {
            // Cancelled by the deletion while running.
            _ if org.deleted && saga.state == "compensated" => "compensated",
            Twilio::Fail => "compensated",
            _ if sent => "completed",
            // The creator's `fail@` address refused, and no other send went through.
            _ if refused && org.email == Email::Fail => "completed_with_errors",
            _ => "completed (with one welcome email sent)",
        };
        check.item(saga.state == expected, || {
            format!(
                "{} ({}, {:?}/{:?}) ended {}, expected {expected}; sends {:?}; {}",
                org.id,
                org.slug,
                org.twilio,
                org.email,
                saga.state,
                sends[i]
                    .iter()
                    .map(|e| (e.key.as_str(), e.status))
                    .collect::<Vec<_>>(),
                saga_evidence(&db, saga)
            )
        });
    }
    report.checks.push(check);

    // 6. Exactly-once effects at the providers.
    let mut check = Check::new("at most one successful create_subaccount per org (ledger)");
    for (i, org) in plan.orgs.iter().enumerate() {
        let ok: Vec<_> = creates[i].iter().filter(|e| successful(e)).collect();
        check.item(ok.len() <= 1, || {
            format!(
                "{}: {} sub-accounts created: {:?}",
                org.id,
                ok.len(),
                ok.iter().map(|e| (&e.id, e.seq)).collect::<Vec<_>>()
            )
        });
    }
    report.checks.push(check);
    let mut check = Check::new("at most one successful send_email per org (ledger)");
    for (i, org) in plan.orgs.iter().enumerate() {
        let ok: Vec<_> = sends[i].iter().filter(|e| successful(e)).collect();
        check.item(ok.len() <= 1, || {
            format!(
                "{}: {} welcome emails sent: {:?}",
                org.id,
                ok.len(),
                ok.iter()
                    .map(|e| (&e.key, &e.id, e.seq))
                    .collect::<Vec<_>>()
            )
        });
    }
    report.checks.push(check);

    // 7. Nothing leaked.
    let mut check = Check::new("no active sub-account for a compensated or deleted org");
    for (i, org) in plan.orgs.iter().enumerate() {
        let compensated = sagas
            .get(org.id.as_str())
            .is_some_and(|saga| saga.state == "compensated");
        if !compensated && !org.deleted {
            continue;
        }
        check.item(open_accounts[i].is_empty(), || {
            format!(
                "{} (deleted: {}, saga {:?}) keeps {:?}",
                org.id,
                org.deleted,
                sagas.get(org.id.as_str()).map(|s| &s.state),
                open_accounts[i]
                    .iter()
                    .map(|a| (&a.sid, a.status))
                    .collect::<Vec<_>>()
            )
        });
    }
    report.checks.push(check);

    let mut check = Check::new("no job running past its lease");
    check.item(!settled.overdue_seen(), || {
        format!(
            "while settling, a running job stayed {:.1} s past its lease",
            settled.most_overdue.as_secs_f64()
        )
    });
    for (id, kind, owner, overdue) in &db.overdue {
        check.item(false, || {
            format!("job {id} {kind} held by {owner} is {overdue} past its lease")
        });
    }
    report.checks.push(check);

    // 8. The database, the ledger and the providers' state tell the same story.
    let mut check = Check::new("the database agrees with the ledger");
    for (i, org) in plan.orgs.iter().enumerate() {
        let Some(saga) = sagas.get(org.id.as_str()) else {
            continue;
        };
        if !is_terminal(&saga.state) {
            continue;
        }
        let mut problems = Vec::new();
        let row = db.orgs.get(&org.id);
        let steps = db.steps.get(&saga.id);
        let output = |name: &str| {
            steps
                .and_then(|s| s.iter().find(|s| s.name == name))
                .map(|s| s.output.clone())
                .unwrap_or(Value::Null)
        };
        let created: Vec<&&Effect> = creates[i].iter().filter(|e| successful(e)).collect();
        let sent: Vec<&&Effect> = sends[i].iter().filter(|e| successful(e)).collect();
        match saga.state.as_str() {
            "completed" | "completed_with_errors" => {
                let sid = output("twilio_subaccount")["sid"]
                    .as_str()
                    .map(str::to_owned);
                if row.and_then(|r| r.twilio_subaccount_sid.clone()) != sid || sid.is_none() {
                    problems.push(format!(
                        "organization.twilio_subaccount_sid {:?} ≠ step output sid {sid:?}",
                        row.and_then(|r| r.twilio_subaccount_sid.clone())
                    ));
                }
                let open: Vec<&str> = open_accounts[i].iter().map(|a| a.sid.as_str()).collect();
                // Offboarding closes the account of a deleted organization.
                let status = if org.deleted {
                    AccountStatus::Closed
                } else {
                    AccountStatus::Active
                };
                let recorded = providers.subaccounts.iter().any(|a| {
                    Some(&a.sid) == sid.as_ref()
                        && a.status == status
                        && a.friendly_name == org.friendly_name()
                });
                if !recorded || open.len() != usize::from(!org.deleted) {
                    problems.push(format!(
                        "recorded sid {sid:?} is not {status:?} or not alone (open: {open:?})"
                    ));
                }
                if created.len() != 1 || created[0].id != sid {
                    problems.push(format!(
                        "ledger creates {:?} ≠ recorded sid {sid:?}",
                        created.iter().map(|e| &e.id).collect::<Vec<_>>()
                    ));
                }
                let status = if org.deleted { "deleted" } else { "active" };
                if row.map(|r| r.onboarding_status.as_str()) != Some(status) {
                    problems.push(format!(
                        "onboarding_status {:?}, expected {status}",
                        row.map(|r| &r.onboarding_status)
                    ));
                }
                if row.map_or(0, |r| r.grants) == 0 {
                    problems.push("no default permissions".into());
                }
                let email = output("welcome_email");
                // An attempt whose commit was lost sent it, and the creator's data changed
                // before the next: that one learned of the send without its id or address.
                let already_sent = email["already_sent"] == true;
                if saga.state == "completed" {
                    let recorded = email["email_id"].as_str();
                    if sent.len() != 1 || (!already_sent && sent[0].id.as_deref() != recorded) {
                        problems.push(format!(
                            "welcome email_id {recorded:?} ≠ ledger sends {:?}",
                            sent.iter().map(|e| &e.id).collect::<Vec<_>>()
                        ));
                    }
                    let recipient = email["recipient"].as_str().map(str::to_lowercase);
                    if sent.len() == 1
                        && !already_sent
                        && recipient.as_deref() != Some(&*sent[0].key.to_lowercase())
                    {
                        problems.push(format!(
                            "welcome recipient {recipient:?} ≠ ledger {}",
                            sent[0].key
                        ));
                    }
                } else if !sent.is_empty() {
                    problems.push(format!("ended with errors yet {} emails sent", sent.len()));
                }
            }
            "compensated" | "compensation_failed" => {
                let status = if org.deleted { "deleted" } else { "failed" };
                if row.map(|r| r.onboarding_status.as_str()) != Some(status) {
                    problems.push(format!(
                        "onboarding_status {:?}, expected {status}",
                        row.map(|r| &r.onboarding_status)
                    ));
                }
                if saga.state == "compensated" && row.map_or(0, |r| r.grants) != 0 {
                    problems.push(format!(
                        "{} default permissions left",
                        row.map_or(0, |r| r.grants)
                    ));
                }
                if !sent.is_empty() {
                    problems.push(format!("{} welcome emails sent", sent.len()));
                }
            }
            _ => {}
        }
        let synced = providers.metadata.get(&org.id).cloned().flatten();
        if synced.as_deref() != Some(saga.state.as_str()) {
            problems.push(format!(
                "Clerk public_metadata.onboarding.state {synced:?} ≠ {}",
                saga.state
            ));
        }
        check.item(problems.is_empty(), || {
            format!("{} ({}): {}", org.id, saga.state, problems.join("; "))
        });
    }
    report.checks.push(check);

    let mut check = Check::new("every deleted org was offboarded once");
    for org in plan.orgs.iter().filter(|o| o.deleted) {
        let jobs = db.offboards.get(&org.id).cloned().unwrap_or_default();
        let status = db.orgs.get(&org.id).map(|r| r.onboarding_status.as_str());
        check.item(jobs == ["completed"] && status == Some("deleted"), || {
            format!(
                "{}: offboarding jobs {jobs:?}, onboarding_status {status:?}",
                org.id
            )
        });
    }
    report.checks.push(check);

    // 9. The directory has every event's effect.
    let mut check = Check::new("the directory holds every user and membership");
    for org in &plan.orgs {
        let members = std::iter::once(&org.creator).chain(org.member.as_ref());
        for person in members {
            check.item(db.users.contains(&person.user_id), || {
                format!("user {} missing", person.user_id)
            });
            let state = db
                .memberships
                .get(&(org.id.clone(), person.user_id.clone()));
            // In a deleted organization every membership has ended.
            let expected = if org.deleted { "ended" } else { "active" };
            check.item(state.map(String::as_str) == Some(expected), || {
                format!(
                    "membership {} in {}: {state:?}, expected {expected}",
                    person.user_id, org.id
                )
            });
        }
    }
    report.checks.push(check);
    report
}
