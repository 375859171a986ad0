//! The sandbox's in-memory state: sub-accounts, email idempotency records, organizations, magic
//! counters, healed keys and the ledger. One mutex guards it all; no handler holds it across an
//! `.await`, so every request's check-then-act is atomic.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::SandboxConfig;

/// The shared state of one sandbox; cheap to clone.
#[derive(Clone)]
pub struct SandboxState {
    shared: Arc<Shared>,
}

struct Shared {
    config: SandboxConfig,
    data: Mutex<Data>,
    closed: watch::Sender<bool>,
}

/// The emulated provider an effect was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// The Twilio Accounts API.
    Twilio,
    /// Resend's emails API.
    Resend,
    /// Clerk's Backend API.
    Clerk,
}

/// What a mutating call asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `POST /2010-04-01/Accounts.json`.
    CreateSubaccount,
    /// `POST /2010-04-01/Accounts/{Sid}.json` with `Status=suspended`.
    SuspendSubaccount,
    /// `POST /2010-04-01/Accounts/{Sid}.json` with `Status=closed`.
    CloseSubaccount,
    /// `POST /2010-04-01/Accounts/{Sid}.json` with `Status=active`.
    ActivateSubaccount,
    /// `POST /2010-04-01/Accounts/{Sid}.json` without `Status` (e.g. a rename).
    UpdateSubaccount,
    /// `POST /emails`.
    SendEmail,
    /// `PATCH /v1/organizations/{id}/metadata`.
    UpdateOrgMetadata,
}

/// One mutating call as the sandbox received it; `id` is set only when it succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    /// 1-based position in the ledger.
    pub seq: u64,
    /// When the request arrived.
    pub at: DateTime<Utc>,
    /// The provider called.
    pub provider: Provider,
    /// What was asked.
    pub action: Action,
    /// What it was about: `FriendlyName`, recipients or org id (see the crate docs).
    pub key: String,
    /// The resource created or changed (sub-account SID, email id, org id), `None` on failure.
    pub id: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
}

/// A Twilio account's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    /// Usable.
    Active,
    /// Blocked but reversible.
    Suspended,
    /// Irreversibly closed.
    Closed,
}

impl AccountStatus {
    /// Parses Twilio's wire value (`active`, `suspended`, `closed`).
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "active" => Some(Self::Active),
            "suspended" => Some(Self::Suspended),
            "closed" => Some(Self::Closed),
            _ => None,
        }
    }

    /// Twilio's wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Closed => "closed",
        }
    }
}

/// A sub-account as `GET /sandbox/subaccounts` shows it (no auth token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubAccountInfo {
    /// `AC` + 32 hex digits.
    pub sid: String,
    /// The `FriendlyName` it was created or renamed with.
    pub friendly_name: String,
    /// Its current status.
    pub status: AccountStatus,
    /// When it was created.
    pub date_created: DateTime<Utc>,
}

/// A Twilio account held by the sandbox (the main one or a sub-account).
#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub(crate) sid: String,
    pub(crate) friendly_name: String,
    pub(crate) status: AccountStatus,
    pub(crate) auth_token: String,
    pub(crate) owner_account_sid: String,
    pub(crate) date_created: DateTime<Utc>,
    pub(crate) date_updated: DateTime<Utc>,
}

/// A successful send remembered under its `Idempotency-Key`.
#[derive(Debug, Clone)]
pub(crate) struct IdempotentSend {
    pub(crate) payload: Value,
    pub(crate) id: String,
    pub(crate) at: DateTime<Utc>,
}

/// A Clerk organization the sandbox has seen through the metadata endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Organization {
    pub(crate) id: String,
    pub(crate) public_metadata: Map<String, Value>,
    pub(crate) private_metadata: Map<String, Value>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

/// Everything behind the mutex.
pub(crate) struct Data {
    pub(crate) main: Account,
    pub(crate) accounts: Vec<Account>,
    /// Failed `-flaky-twilio` creates so far, by `FriendlyName`.
    pub(crate) flaky_creates: HashMap<String, u32>,
    /// Failed `flaky@…` sends so far, by lowercase recipient.
    pub(crate) flaky_sends: HashMap<String, u32>,
    /// Lowercase keys whose magic is off.
    pub(crate) healed: HashSet<String>,
    /// Registered slugs by org id.
    pub(crate) slugs: HashMap<String, String>,
    pub(crate) sends: HashMap<String, IdempotentSend>,
    pub(crate) orgs: HashMap<String, Organization>,
    ledger: Vec<Effect>,
}

impl Data {
    /// Appends an effect stamped now.
    pub(crate) fn record(
        &mut self,
        provider: Provider,
        action: Action,
        key: impl Into<String>,
        id: Option<String>,
        status: u16,
    ) {
        let seq = self.ledger.len() as u64 + 1;
        self.ledger.push(Effect {
            seq,
            at: Utc::now(),
            provider,
            action,
            key: key.into(),
            id,
            status,
        });
    }

    /// Whether any of `keys` was healed.
    pub(crate) fn is_healed<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> bool {
        keys.into_iter()
            .any(|key| self.healed.contains(&key.trim().to_lowercase()))
    }
}

impl SandboxState {
    /// A fresh, empty state accepting `config`'s credentials.
    pub fn new(config: SandboxConfig) -> Self {
        let now = Utc::now();
        let main = Account {
            sid: config.twilio_account_sid.clone(),
            friendly_name: "Sandbox main account".to_owned(),
            status: AccountStatus::Active,
            auth_token: config.twilio_auth_token.clone(),
            owner_account_sid: config.twilio_account_sid.clone(),
            date_created: now,
            date_updated: now,
        };
        let data = Data {
            main,
            accounts: Vec::new(),
            flaky_creates: HashMap::new(),
            flaky_sends: HashMap::new(),
            healed: HashSet::new(),
            slugs: HashMap::new(),
            sends: HashMap::new(),
            orgs: HashMap::new(),
            ledger: Vec::new(),
        };
        let (closed, _) = watch::channel(false);
        Self {
            shared: Arc::new(Shared {
                config,
                data: Mutex::new(data),
                closed,
            }),
        }
    }

    /// The configuration this state was made with.
    pub fn config(&self) -> &SandboxConfig {
        &self.shared.config
    }

    /// Locks the data; a poisoned lock is taken over (a panicking handler leaves no partial write
    /// that later requests could not read).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Data> {
        self.shared
            .data
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends one effect.
    pub(crate) fn record(
        &self,
        provider: Provider,
        action: Action,
        key: impl Into<String>,
        id: Option<String>,
        status: u16,
    ) {
        self.lock().record(provider, action, key, id, status);
    }

    /// Every effect recorded so far, in order.
    pub fn ledger(&self) -> Vec<Effect> {
        self.lock().ledger.clone()
    }

    /// Every sub-account created so far, in creation order.
    pub fn subaccounts(&self) -> Vec<SubAccountInfo> {
        self.lock()
            .accounts
            .iter()
            .map(|account| SubAccountInfo {
                sid: account.sid.clone(),
                friendly_name: account.friendly_name.clone(),
                status: account.status,
                date_created: account.date_created,
            })
            .collect()
    }

    /// The email body Resend accepted under `idempotency_key` (within its 24 h window or not).
    pub fn sent_email(&self, idempotency_key: &str) -> Option<Value> {
        self.lock()
            .sends
            .get(idempotency_key)
            .map(|send| send.payload.clone())
    }

    /// Turns the magic of `key` (slug, org id, `FriendlyName` or recipient) off.
    pub fn heal(&self, key: &str) {
        self.lock().healed.insert(key.trim().to_lowercase());
    }

    /// Records `slug` as the slug of `org_id`, for slug magic on `org:<org_id>`.
    pub fn register(&self, org_id: &str, slug: &str) {
        self.lock().slugs.insert(org_id.to_owned(), slug.to_owned());
    }

    /// Signals shutdown: the server stops accepting and slow answers end early.
    pub fn close(&self) {
        self.shared.closed.send_replace(true);
    }

    /// Resolves once [`SandboxState::close`] was called.
    pub(crate) fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut closed = self.shared.closed.subscribe();
        async move {
            // An error means the sender is gone, which also means shut down.
            let _ = closed.wait_for(|closed| *closed).await;
        }
    }

    /// Waits `slow_delay`, or less if the sandbox shuts down meanwhile.
    pub(crate) async fn wait_slow(&self) {
        tokio::select! {
            () = tokio::time::sleep(self.shared.config.slow_delay) => {}
            () = self.closed() => {}
        }
    }
}

impl std::fmt::Debug for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxState")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// Clerk's metadata merge: objects merge recursively, `null` deletes a key, anything else replaces.
pub(crate) fn deep_merge(target: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(&key);
            }
            Value::Object(patch) => {
                if let Some(Value::Object(existing)) = target.get_mut(&key) {
                    deep_merge(existing, patch);
                } else {
                    let mut fresh = Map::new();
                    deep_merge(&mut fresh, patch);
                    target.insert(key, Value::Object(fresh));
                }
            }
            other => {
                target.insert(key, other);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn deep_merge_keeps_siblings_replaces_leaves_and_deletes_nulls() {
        let mut target = object(json!({"a": {"x": 1, "y": 2}, "b": 1, "c": "keep"}));
        deep_merge(
            &mut target,
            object(json!({"a": {"y": 3, "z": {"n": null, "m": 1}}, "b": null, "d": [1]})),
        );
        assert_eq!(
            Value::Object(target),
            json!({"a": {"x": 1, "y": 3, "z": {"m": 1}}, "c": "keep", "d": [1]})
        );
    }

    #[test]
    fn effects_are_numbered_from_one_in_order() {
        let state = SandboxState::new(SandboxConfig::default());
        state.record(Provider::Resend, Action::SendEmail, "a@x", None, 422);
        state.record(
            Provider::Clerk,
            Action::UpdateOrgMetadata,
            "org_1",
            None,
            200,
        );
        let ledger = state.ledger();
        assert_eq!(
            ledger.iter().map(|effect| effect.seq).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(ledger[1].action, Action::UpdateOrgMetadata);
    }
}
