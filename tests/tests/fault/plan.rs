//! The seeded plan of a run: the organizations and their providers' magic (DESIGN.md §7), the
//! messages, how often and in which order each is delivered, and when the faults strike. The
//! same seed gives the same plan; the processes' timing still varies from run to run.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::config::Config;
use crate::events::{self, Person};

/// How the sandbox's Twilio treats the organization (by its slug's suffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Twilio {
    /// Creates at once.
    Normal,
    /// `-flaky-twilio`: 503 twice, then creates.
    Flaky,
    /// `-slow-twilio`: creates at once, answers after the client's timeout (ambiguous).
    Slow,
    /// `-fail-twilio`: 400: the saga compensates.
    Fail,
}

/// How the sandbox's Resend treats the creator's address (by its local part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Email {
    /// Sends.
    Normal,
    /// `flaky@…`: 429 with `Retry-After: 1` twice, then sends.
    Flaky,
    /// `fail@…`: 422: the saga ends `completed_with_errors`.
    Fail,
}

/// One organization of the run.
#[derive(Debug, Clone)]
pub struct Org {
    /// `org_…`.
    pub id: String,
    /// Carries the Twilio magic suffix; registered with the sandbox.
    pub slug: String,
    /// The Twilio magic.
    pub twilio: Twilio,
    /// The creator's email magic.
    pub email: Email,
    /// Who created it.
    pub creator: Person,
    /// A second member, for half of them.
    pub member: Option<Person>,
    /// One in ten is also deleted (`organization.deleted`, shuffled in with the rest: before,
    /// during or after its onboarding).
    pub deleted: bool,
}

impl Org {
    /// The sub-account name the worker gives the organization's Twilio account.
    pub fn friendly_name(&self) -> String {
        format!("org:{}", self.id)
    }

    /// Where the welcome email may go: the creator's address from `user.created`, or the
    /// sandbox Clerk's answer (`<user_id>@example.com`) when the step ran before that event
    /// was applied (deliveries are shuffled, so either is correct).
    pub fn recipients(&self) -> [String; 2] {
        [
            self.creator.email.to_lowercase(),
            format!("{}@example.com", self.creator.user_id).to_lowercase(),
        ]
    }
}

/// One Clerk event, with its Svix message id and exact body.
#[derive(Debug, Clone)]
pub struct Message {
    /// `svix-id`: the same for every delivery of the message.
    pub svix_id: String,
    /// The Clerk event type.
    pub event_type: String,
    /// The body, signed and sent as is.
    pub body: Vec<u8>,
}

/// One step of the driver: `copies` deliveries of a message, all at once when more than one.
#[derive(Debug, Clone, Copy)]
pub struct Unit {
    /// Index into [`Plan::messages`].
    pub message: usize,
    /// Deliveries sent concurrently.
    pub copies: usize,
}

/// One SIGKILL.
#[derive(Debug, Clone, Copy)]
pub struct Kill {
    /// When, from the start of the load.
    pub at: Duration,
    /// Which worker (0 or 1).
    pub worker: usize,
    /// How long it stays dead before it is started again.
    pub down_for: Duration,
}

/// Everything a run does, decided up front from the seed.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The organizations.
    pub orgs: Vec<Org>,
    /// Every message.
    pub messages: Vec<Message>,
    /// The deliveries, shuffled.
    pub units: Vec<Unit>,
    /// The worker kills, in time order.
    pub kills: Vec<Kill>,
    /// When PostgreSQL restarts, from the start of the load.
    pub pg_restarts: Vec<Duration>,
    /// The deliveries are spread evenly over this long.
    pub send_over: Duration,
}

fn token(rng: &mut StdRng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
        .collect()
}

fn between(rng: &mut StdRng, from: Duration, to: Duration) -> Duration {
    if to <= from {
        return from;
    }
    Duration::from_secs_f64(rng.random_range(from.as_secs_f64()..to.as_secs_f64()))
}

fn person(rng: &mut StdRng, email: Email) -> Person {
    let user_id = format!("user_{}", token(rng, 24));
    let tag = token(rng, 10).to_lowercase();
    let email = match email {
        Email::Normal => format!("{}@fault.example.test", user_id.to_lowercase()),
        Email::Flaky => format!("flaky@{tag}.example.test"),
        Email::Fail => format!("fail@{tag}.example.test"),
    };
    Person {
        user_id,
        first_name: format!("Fault{}", token(rng, 4)),
        email,
    }
}

impl Plan {
    /// The plan `config` and its seed give.
    pub fn new(config: &Config) -> Plan {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let at_ms = chrono::Utc::now().timestamp_millis();
        let mut orgs = Vec::with_capacity(config.orgs);
        for i in 0..config.orgs {
            let twilio = match rng.random_range(0..100) {
                0..10 => Twilio::Fail,
                10..20 => Twilio::Flaky,
                20..25 => Twilio::Slow,
                _ => Twilio::Normal,
            };
            let email = match rng.random_range(0..100) {
                0..10 => Email::Fail,
                10..20 => Email::Flaky,
                _ => Email::Normal,
            };
            let suffix = match twilio {
                Twilio::Normal => "",
                Twilio::Flaky => sandbox::FLAKY_TWILIO,
                Twilio::Slow => sandbox::SLOW_TWILIO,
                Twilio::Fail => sandbox::FAIL_TWILIO,
            };
            let creator = person(&mut rng, email);
            let member = rng
                .random_bool(0.5)
                .then(|| person(&mut rng, Email::Normal));
            let deleted = rng.random_bool(0.1);
            orgs.push(Org {
                id: format!("org_{}", token(&mut rng, 24)),
                slug: format!("fault-{i}-{}{suffix}", token(&mut rng, 4).to_lowercase()),
                twilio,
                email,
                creator,
                member,
                deleted,
            });
        }

        let mut messages = Vec::new();
        let mut add = |rng: &mut StdRng, event: serde_json::Value| {
            messages.push(Message {
                svix_id: format!("msg_{}", token(rng, 27)),
                event_type: event["type"].as_str().unwrap_or_default().to_owned(),
                body: serde_json::to_vec(&event).expect("event json"),
            });
        };
        for org in &orgs {
            let names = (
                org.id.as_str(),
                org.slug.as_str(),
                org.creator.user_id.as_str(),
            );
            add(
                &mut rng,
                events::organization_created(&org.id, &org.slug, &org.creator.user_id, at_ms),
            );
            add(&mut rng, events::user_created(&org.creator, at_ms));
            let membership = format!("orgmem_{}", token(&mut rng, 24));
            add(
                &mut rng,
                events::membership_created(&membership, names, &org.creator, "org:admin", at_ms),
            );
            if let Some(member) = &org.member {
                add(&mut rng, events::user_created(member, at_ms));
                let membership = format!("orgmem_{}", token(&mut rng, 24));
                add(
                    &mut rng,
                    events::membership_created(&membership, names, member, "org:member", at_ms),
                );
            }
            if org.deleted {
                add(
                    &mut rng,
                    events::organization_deleted(&org.id, &org.slug, at_ms + 1),
                );
            }
        }

        let mut units = Vec::new();
        for message in 0..messages.len() {
            let copies = rng.random_range(1..=3);
            if copies > 1 && rng.random_bool(0.3) {
                units.push(Unit { message, copies });
            } else {
                units.extend((0..copies).map(|_| Unit { message, copies: 1 }));
            }
        }
        units.shuffle(&mut rng);

        let send_over = config.window / 2;
        let mut kills: Vec<Kill> = (0..config.kills)
            .map(|_| Kill {
                at: between(&mut rng, Duration::from_secs(1), config.window),
                worker: rng.random_range(0..2),
                down_for: between(&mut rng, Duration::from_millis(200), Duration::from_secs(3)),
            })
            .collect();
        kills.sort_by_key(|kill| kill.at);
        let mut pg_restarts: Vec<Duration> = (0..config.pg_restarts)
            .map(|_| between(&mut rng, send_over.mul_f64(0.2), send_over.mul_f64(0.9)))
            .collect();
        pg_restarts.sort();
        Plan {
            orgs,
            messages,
            units,
            kills,
            pg_restarts,
            send_over,
        }
    }

    /// One line: what the plan holds.
    pub fn summary(&self) -> String {
        let count = |f: &dyn Fn(&Org) -> bool| self.orgs.iter().filter(|o| f(o)).count();
        let deliveries: usize = self.units.iter().map(|u| u.copies).sum();
        let bursts = self.units.iter().filter(|u| u.copies > 1).count();
        format!(
            "plan: {} orgs (twilio fail {}, flaky {}, slow {}; email fail {}, flaky {}; deleted {}), {} messages, \
             {} deliveries over {:.1} s ({} concurrent bursts), kills at {:?}, PostgreSQL restarts at {:?}",
            self.orgs.len(),
            count(&|o| o.twilio == Twilio::Fail),
            count(&|o| o.twilio == Twilio::Flaky),
            count(&|o| o.twilio == Twilio::Slow),
            count(&|o| o.email == Email::Fail),
            count(&|o| o.email == Email::Flaky),
            count(&|o| o.deleted),
            self.messages.len(),
            deliveries,
            self.send_over.as_secs_f64(),
            bursts,
            self.kills
                .iter()
                .map(|k| format!("{:.1}s→w{}", k.at.as_secs_f64(), k.worker))
                .collect::<Vec<_>>(),
            self.pg_restarts
                .iter()
                .map(|d| format!("{:.1}s", d.as_secs_f64()))
                .collect::<Vec<_>>(),
        )
    }
}
