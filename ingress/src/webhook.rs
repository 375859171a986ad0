//! `POST /webhooks/clerk`: verify the raw bytes, parse the envelope leniently, store the
//! delivery and its job in one statement, answer `204` only once that is committed. The
//! statement sends no NOTIFY (it would serialise the commits); the job's queue is noted in the
//! state's [`jobs::notify::Coalescer`], which wakes the workers at most once per few ms.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use onboarding::inbox::{
    self, ClerkEnvelope, EnvelopeError, InboxEntry, OwnedEntry, ReceiveError, RejectedDelivery,
};

use crate::error::{ApiError, NotAnEvent};
use crate::inbox_writer::WriteError;
use crate::metrics;
use crate::signature::SvixHeaders;
use crate::state::AppState;

/// Receives one Clerk delivery (DESIGN.md §6).
#[tracing::instrument(name = "clerk_webhook", skip_all, fields(svix_id, event_type))]
pub async fn receive_clerk_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let svix =
        SvixHeaders::read(&headers).inspect_err(|e| metrics::signature_failure(e.reason()))?;
    tracing::Span::current().record("svix_id", svix.id.as_str());
    let bytes = state.read_body(body).await?;
    state
        .secrets()
        .verify(&headers, &svix, &bytes, state.clock().now())
        .inspect_err(|e| metrics::signature_failure(e.reason()))?;

    // Verified: only now is the body parsed. Signed bodies are UTF-8 (Svix signs text). The
    // sender gets a fixed message per class; the detail is kept for operators.
    let parsed = std::str::from_utf8(&bytes)
        .map_err(|_| (NotAnEvent::NotUtf8, "the body is not UTF-8".to_owned()))
        .and_then(|text| {
            ClerkEnvelope::parse(&bytes)
                .map(|e| (text, e))
                .map_err(|e| (NotAnEvent::from(&e), e.to_string()))
        });
    let (payload, envelope) = match parsed {
        Ok(ok) => ok,
        Err((class, reason)) => return Err(reject(&state, &svix, &bytes, class, reason).await),
    };
    tracing::Span::current().record("event_type", envelope.event_type.as_str());

    let started = Instant::now();
    let entry = InboxEntry {
        svix_id: &svix.id,
        svix_timestamp: svix.timestamp,
        svix_signature: &svix.signature,
        payload,
        envelope: &envelope,
    };
    // No outer deadline here: the writer applies it while the delivery waits for a batch, and
    // a delivery a batch took is answered by that batch's outcome (2xx iff committed).
    let received = match state
        .writer()
        .receive(OwnedEntry::from_entry(&entry), state.db_timeout())
        .await
    {
        Ok(received) => Ok(received),
        Err(WriteError::Receive(ReceiveError::Unstorable(reason))) => Err(reason),
        Err(WriteError::Receive(ReceiveError::Database(e))) => return Err(ApiError::database(e)),
        Err(e @ (WriteError::Full | WriteError::TimedOut(_))) => {
            return Err(ApiError::Unavailable(anyhow::Error::new(e)));
        }
    };
    match received {
        Ok(received) => {
            metrics::enqueue_latency(started.elapsed());
            if let Some(queue) = received.queue_to_wake() {
                state.coalescer().note(queue);
            }
            if received.new {
                tracing::debug!(
                    inbox_id = received.inbox_id,
                    job_id = received.job_id,
                    "stored"
                );
            } else {
                metrics::duplicate();
                tracing::debug!("duplicate delivery");
            }
            Ok(StatusCode::NO_CONTENT)
        }
        Err(reason) => Err(reject(
            &state,
            &svix,
            &bytes,
            NotAnEvent::Unstorable,
            format!("payload not storable: {reason}"),
        )
        .await),
    }
}

impl From<&EnvelopeError> for NotAnEvent {
    fn from(error: &EnvelopeError) -> Self {
        match error {
            EnvelopeError::Shape(_) => NotAnEvent::NotAnEnvelope,
            EnvelopeError::EventType => NotAnEvent::EventType,
            EnvelopeError::OrganizationId => NotAnEvent::OrganizationId,
        }
    }
}

/// Records a signed delivery that is not a Clerk event and returns the `400` for it (or the
/// `503` when it cannot be recorded, so that Svix retries).
async fn reject(
    state: &AppState,
    svix: &SvixHeaders,
    body: &[u8],
    class: NotAnEvent,
    reason: String,
) -> ApiError {
    let recorded = state
        .db(async {
            let mut conn = state.pool().acquire().await.map_err(ApiError::database)?;
            let delivery = RejectedDelivery {
                svix_id: &svix.id,
                svix_timestamp: svix.timestamp,
                reason: &reason,
                body,
            };
            inbox::reject(&mut conn, delivery)
                .await
                .map_err(ApiError::database)
        })
        .await;
    match recorded {
        Ok(()) => {
            metrics::rejected();
            ApiError::NotAnEvent(class)
        }
        Err(e) => e,
    }
}
