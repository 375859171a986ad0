//! How long the webhook inbox, rejected deliveries and the API's idempotency records are kept
//! (issue 9 §13), and the [`DataRetention`] service that enforces it. The worker runs it as a
//! periodic job ([`KIND`]); one replica runs a round at a time (a transaction-scoped advisory
//! lock), and every delete repeats its age guard in the outer statement.
//!
//! | what | kept | default |
//! |---|---|---|
//! | inbox payload and `svix_signature` | `payload` | 30 days |
//! | inbox row (its `svix-id`, dedup, and `received_at`) | `svix_id` | 365 days |
//! | `rejected_delivery` (since its last attempt) | `rejected` | 30 days |
//! | `api_idempotency` (an `Idempotency-Key` replays its answer) | `idempotency` | 7 days |
//!
//! Svix retries a message for about 27 hours and an operator can replay it later by hand: the
//! `svix-id` outlives both by far, while the personal data in the payload goes after a month.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

/// The kind of the periodic job that runs a retention round.
pub const KIND: &str = "onboarding.retention";
/// The queue of [`KIND`].
pub const QUEUE: &str = "maintenance";

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The advisory lock key of a retention round (transaction-scoped: works behind poolers).
pub const ROUND_LOCK: i64 = crate::advisory_lock::RETENTION;

/// The retention windows, and how much one round does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRetention {
    /// How long an inbox row keeps its payload and signature (`ONBOARD_RETENTION_PAYLOAD`).
    pub payload: Duration,
    /// How long an inbox row (its `svix-id`) is kept at all (`ONBOARD_RETENTION_SVIX_ID`).
    pub svix_id: Duration,
    /// How long a rejected delivery is kept after its last attempt (`ONBOARD_RETENTION_REJECTED`).
    pub rejected: Duration,
    /// How long an API idempotency record is kept (`ONBOARD_RETENTION_IDEMPOTENCY`).
    pub idempotency: Duration,
    /// How often a round runs (`ONBOARD_RETENTION_EVERY`).
    pub every: Duration,
    /// Rows changed per table per statement at most.
    pub batch: i64,
    /// Statements per table per round at most (a round stops earlier once a table is done).
    pub max_batches: u32,
}

impl Default for DataRetention {
    fn default() -> Self {
        DataRetention {
            payload: 30 * DAY,
            svix_id: 365 * DAY,
            rejected: 30 * DAY,
            idempotency: 7 * DAY,
            every: Duration::from_secs(600),
            batch: 5_000,
            max_batches: 100,
        }
    }
}

/// A retention setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    /// Not `<number><unit>` with unit `s`, `m`, `h` or `d`, or zero.
    #[error("{0} must be a positive number followed by s, m, h or d (e.g. 30d)")]
    Invalid(&'static str),
    /// The payload would outlive the row that holds it.
    #[error("ONBOARD_RETENTION_PAYLOAD must not exceed ONBOARD_RETENTION_SVIX_ID")]
    PayloadOutlivesRow,
}

/// Parses `30d`, `12h`, `15m` or `45s`.
pub fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let split = value.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().ok().filter(|n| *n > 0)?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    number.checked_mul(unit).map(Duration::from_secs)
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// False when another replica held the round's lock (nothing was done).
    pub ran: bool,
    /// Inbox rows whose payload and signature were dropped.
    pub payloads: u64,
    /// Inbox rows deleted.
    pub inbox: u64,
    /// Rejected deliveries deleted.
    pub rejected: u64,
    /// Idempotency records deleted.
    pub idempotency: u64,
}

// Each statement picks a batch by age, then repeats the age guard on the rows it changes, so
// a row that changed meanwhile (e.g. a rejected delivery seen again) is left alone.
const STRIP_PAYLOADS: &str = "
update onboard.inbox set payload = null, svix_signature = null
 where id = any(array(
         select id from onboard.inbox
          where payload is not null and received_at < now() - $1 * interval '1 millisecond'
          order by received_at limit $2 for update skip locked))
   and payload is not null and received_at < now() - $1 * interval '1 millisecond'";

const DELETE_INBOX: &str = "
delete from onboard.inbox
 where id = any(array(
         select id from onboard.inbox
          where received_at < now() - $1 * interval '1 millisecond'
          limit $2 for update skip locked))
   and received_at < now() - $1 * interval '1 millisecond'";

const DELETE_REJECTED: &str = "
delete from onboard.rejected_delivery
 where id = any(array(
         select id from onboard.rejected_delivery
          where last_seen_at < now() - $1 * interval '1 millisecond'
          limit $2 for update skip locked))
   and last_seen_at < now() - $1 * interval '1 millisecond'";

const DELETE_IDEMPOTENCY: &str = "
delete from onboard.api_idempotency
 where (api_key_id, idempotency_key) in (
         select api_key_id, idempotency_key from onboard.api_idempotency
          where created_at < now() - $1 * interval '1 millisecond'
          limit $2 for update skip locked)
   and created_at < now() - $1 * interval '1 millisecond'";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl DataRetention {
    /// The defaults, overridden by the `ONBOARD_RETENTION_*` variables set.
    pub fn from_env() -> Result<Self, RetentionError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`DataRetention::from_env`] through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, RetentionError> {
        let mut settings = DataRetention::default();
        for (name, field) in [
            ("ONBOARD_RETENTION_PAYLOAD", &mut settings.payload),
            ("ONBOARD_RETENTION_SVIX_ID", &mut settings.svix_id),
            ("ONBOARD_RETENTION_REJECTED", &mut settings.rejected),
            ("ONBOARD_RETENTION_IDEMPOTENCY", &mut settings.idempotency),
            ("ONBOARD_RETENTION_EVERY", &mut settings.every),
        ] {
            if let Some(value) = lookup(name).filter(|v| !v.trim().is_empty()) {
                *field = parse_duration(&value).ok_or(RetentionError::Invalid(name))?;
            }
        }
        if settings.payload > settings.svix_id {
            return Err(RetentionError::PayloadOutlivesRow);
        }
        Ok(settings)
    }

    /// One batch of each table in one transaction, if no other replica holds the lock.
    pub async fn run_batch(&self, pool: &PgPool) -> Result<RetentionReport, sqlx::Error> {
        let mut tx = pool.begin().await?;
        let locked: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock($1)")
            .bind(ROUND_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(RetentionReport::default());
        }
        let report = self.run_locked(&mut tx).await?;
        tx.commit().await?;
        Ok(report)
    }

    async fn run_locked(&self, conn: &mut PgConnection) -> Result<RetentionReport, sqlx::Error> {
        let mut run = async |sql: &'static str, keep: Duration| -> Result<u64, sqlx::Error> {
            Ok(sqlx::query(sql)
                .bind(millis(keep))
                .bind(self.batch)
                .execute(&mut *conn)
                .await?
                .rows_affected())
        };
        // Rows past both windows are deleted, not stripped first.
        let inbox = run(DELETE_INBOX, self.svix_id).await?;
        Ok(RetentionReport {
            ran: true,
            payloads: run(STRIP_PAYLOADS, self.payload).await?,
            inbox,
            rejected: run(DELETE_REJECTED, self.rejected).await?,
            idempotency: run(DELETE_IDEMPOTENCY, self.idempotency).await?,
        })
    }

    /// Batches until every table is within its window (at most `max_batches`), each batch its
    /// own transaction; stops at the first batch another replica's lock skips.
    pub async fn run_once(&self, pool: &PgPool) -> Result<RetentionReport, sqlx::Error> {
        let mut total = RetentionReport::default();
        for _ in 0..self.max_batches.max(1) {
            let batch = self.run_batch(pool).await?;
            if !batch.ran {
                break;
            }
            total.ran = true;
            total.payloads += batch.payloads;
            total.inbox += batch.inbox;
            total.rejected += batch.rejected;
            total.idempotency += batch.idempotency;
            let limit = u64::try_from(self.batch).unwrap_or(0);
            if [
                batch.payloads,
                batch.inbox,
                batch.rejected,
                batch.idempotency,
            ]
            .iter()
            .all(|n| *n < limit)
            {
                break;
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_have_a_unit_and_are_positive() {
        assert_eq!(parse_duration("30d"), Some(30 * DAY));
        assert_eq!(parse_duration("12h"), Some(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("45s"), Some(Duration::from_secs(45)));
        for bad in [
            "",
            "30",
            "d",
            "0d",
            "-1d",
            "1w",
            "1.5d",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn settings_default_and_are_validated() {
        let none = DataRetention::from_lookup(|_| None).unwrap();
        assert_eq!(none, DataRetention::default());
        assert_eq!(none.payload, 30 * DAY);
        assert_eq!(none.svix_id, 365 * DAY);
        let set = DataRetention::from_lookup(|n| {
            (n == "ONBOARD_RETENTION_REJECTED").then(|| "2d".into())
        })
        .unwrap();
        assert_eq!(set.rejected, 2 * DAY);
        assert_eq!(
            DataRetention::from_lookup(
                |n| (n == "ONBOARD_RETENTION_PAYLOAD").then(|| "400d".into())
            ),
            Err(RetentionError::PayloadOutlivesRow)
        );
        assert_eq!(
            DataRetention::from_lookup(|n| (n == "ONBOARD_RETENTION_EVERY").then(|| "soon".into())),
            Err(RetentionError::Invalid("ONBOARD_RETENTION_EVERY"))
        );
    }
}
