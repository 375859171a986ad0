//! The load: every planned delivery, signed as Svix signs it (a fresh `svix-timestamp` and
//! signature per attempt, the same `svix-id` and body), spread over the plan's send window,
//! several at once. Like Svix, a delivery that is not answered 2xx is retried with backoff.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::plan::Plan;
use crate::roles::SECRET;

/// Deliveries in flight at once.
const CONCURRENCY: usize = 16;
/// A delivery still not accepted after this long is given up (and reported).
const GIVE_UP: Duration = Duration::from_secs(120);

/// How one delivery went: every attempt's answer, in order.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Index into [`Plan::messages`].
    pub message: usize,
    /// `204`, `503`, … or `error: …` for a transport failure.
    pub answers: Vec<String>,
    /// Answered 2xx in the end.
    pub accepted: bool,
}

/// Every delivery of the run.
#[derive(Debug, Default)]
pub struct Deliveries {
    /// One per delivery (a concurrent burst of three is three).
    pub all: Vec<Delivery>,
}

impl Deliveries {
    /// One line: requests by answer.
    pub fn summary(&self, elapsed: Duration) -> String {
        let mut by_answer: BTreeMap<String, usize> = BTreeMap::new();
        for answer in self.all.iter().flat_map(|d| &d.answers) {
            let key = if answer.starts_with("error") {
                "transport error".to_owned()
            } else {
                answer.clone()
            };
            *by_answer.entry(key).or_default() += 1;
        }
        format!(
            "deliveries: {} sent ({} accepted) in {} requests {by_answer:?}, done at {:.1} s",
            self.all.len(),
            self.all.iter().filter(|d| d.accepted).count(),
            self.all.iter().map(|d| d.answers.len()).sum::<usize>(),
            elapsed.as_secs_f64()
        )
    }
}

async fn deliver_once(http: &reqwest::Client, url: &str, plan: &Plan, message: usize) -> Delivery {
    let msg = &plan.messages[message];
    let started = Instant::now();
    let mut answers = Vec::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let timestamp = chrono::Utc::now().timestamp();
        let signature =
            ingress::send::sign(SECRET, &msg.svix_id, timestamp, &msg.body).expect("sign");
        let sent = http
            .post(url)
            .header("content-type", "application/json")
            .header("svix-id", &msg.svix_id)
            .header("svix-timestamp", timestamp.to_string())
            .header("svix-signature", signature)
            .body(msg.body.clone())
            .send()
            .await;
        let accepted = match sent {
            Ok(response) => {
                let status = response.status();
                answers.push(status.as_u16().to_string());
                status.is_success()
            }
            Err(error) => {
                answers.push(format!("error: {error}"));
                false
            }
        };
        if accepted || started.elapsed() > GIVE_UP {
            return Delivery {
                message,
                answers,
                accepted,
            };
        }
        // Svix's retry schedule, compressed.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Sends every unit of the plan, unit `i` not before `t0 + i · send_over / units`.
pub async fn deliver(url: &str, plan: &Plan, t0: Instant) -> Deliveries {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client");
    let n = plan.units.len().max(1) as u32;
    let step = plan.send_over / n;
    let all: Vec<Vec<Delivery>> = futures::stream::iter(plan.units.iter().enumerate())
        .map(|(i, unit)| {
            let http = http.clone();
            async move {
                // Pacing the load over the window, not waiting for work.
                tokio::time::sleep_until((t0 + step * i as u32).into()).await;
                futures::future::join_all(
                    (0..unit.copies).map(|_| deliver_once(&http, url, plan, unit.message)),
                )
                .await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    Deliveries {
        all: all.into_iter().flatten().collect(),
    }
}
