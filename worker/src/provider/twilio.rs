//! Twilio's Accounts API (2010-04-01) client: create, list by `FriendlyName` and `Status`, fetch
//! and update the status of sub-accounts, with the main account's SID and auth token (HTTP Basic).
//! There is no idempotency key on these endpoints: creates are deduplicated by listing the
//! deterministic `FriendlyName` (`reference/protocols.md` §6.4).

use std::time::Duration;

use reqwest::Url;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};

use super::error::{ProviderError, SetupError};
use super::http::{self, Idempotence};

const PROVIDER: &str = "twilio";
const API_VERSION: &str = "2010-04-01";
/// Most pages [`TwilioClient::list_subaccounts`] follows before giving up.
const MAX_PAGES: usize = 1000;

/// Where and as whom the Twilio client calls.
#[derive(Clone)]
pub struct TwilioConfig {
    /// `https://api.twilio.com`, or the sandbox's base URL.
    pub base_url: Url,
    /// The main account SID (`AC…`), HTTP Basic user name.
    pub account_sid: String,
    /// The main account's auth token, HTTP Basic password.
    pub auth_token: SecretString,
    /// Whole-call timeout (connect, send, read); [`super::DEFAULT_TIMEOUT`] by default.
    pub timeout: Duration,
    /// `PageSize` of list calls (1–1000).
    pub page_size: u32,
}

impl TwilioConfig {
    /// A config with the default timeout and page size.
    pub fn new(base_url: Url, account_sid: impl Into<String>, auth_token: SecretString) -> Self {
        Self {
            base_url,
            account_sid: account_sid.into(),
            auth_token,
            timeout: super::DEFAULT_TIMEOUT,
            page_size: 100,
        }
    }
}

impl std::fmt::Debug for TwilioConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioConfig")
            .field("base_url", &self.base_url.as_str())
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"[REDACTED]")
            .field("timeout", &self.timeout)
            .field("page_size", &self.page_size)
            .finish()
    }
}

/// A Twilio account's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    /// Usable.
    Active,
    /// Cannot call or message; reversible.
    Suspended,
    /// Closed for good; its numbers are released.
    Closed,
    /// A status this client does not know.
    #[serde(other)]
    Other,
}

impl AccountStatus {
    /// Twilio's wire value (`other` for [`AccountStatus::Other`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Closed => "closed",
            Self::Other => "other",
        }
    }
}

impl std::fmt::Display for AccountStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Twilio sub-account as onboarding needs it; its auth token is deliberately not kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubAccount {
    /// `AC` + 32 hex digits.
    pub sid: String,
    /// The name it was created with (`org:<clerk_org_id>` for ours).
    pub friendly_name: String,
    /// Its status.
    pub status: AccountStatus,
    /// The main account that owns it.
    #[serde(default)]
    pub owner_account_sid: Option<String>,
    /// Creation time as Twilio renders it (RFC 2822).
    #[serde(default)]
    pub date_created: Option<String>,
}

#[derive(Deserialize)]
struct AccountPage {
    accounts: Vec<SubAccount>,
    #[serde(default)]
    next_page_uri: Option<String>,
}

/// Client of Twilio's Accounts API; cheap to clone, safe to share.
#[derive(Clone)]
pub struct TwilioClient {
    http: reqwest::Client,
    config: TwilioConfig,
}

impl std::fmt::Debug for TwilioClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TwilioClient {
    /// A client with its own connection pool.
    pub fn new(config: TwilioConfig) -> Result<Self, SetupError> {
        let http = http::build_client(config.timeout)?;
        Self::with_http(http, config)
    }

    /// A client sharing `http`'s connection pool (build it without redirects).
    pub fn with_http(http: reqwest::Client, config: TwilioConfig) -> Result<Self, SetupError> {
        http::check_base_url(&config.base_url, "Twilio")?;
        let header_safe = |value: &str| !value.chars().any(char::is_control);
        if !header_safe(&config.account_sid) || config.account_sid.contains(':') {
            return Err(SetupError::Credential("TWILIO_ACCOUNT_SID"));
        }
        if !header_safe(config.auth_token.expose_secret()) {
            return Err(SetupError::Credential("TWILIO_AUTH_TOKEN"));
        }
        Ok(Self { http, config })
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .basic_auth(
                &self.config.account_sid,
                Some(self.config.auth_token.expose_secret()),
            )
            .timeout(self.config.timeout)
    }

    fn accounts_url(&self) -> Url {
        http::endpoint(&self.config.base_url, &[API_VERSION, "Accounts.json"])
    }

    fn account_url(&self, sid: &str) -> Url {
        http::endpoint(
            &self.config.base_url,
            &[API_VERSION, "Accounts", &format!("{sid}.json")],
        )
    }

    /// Creates a sub-account named `friendly_name` (≤ 64 characters). Not idempotent: a timeout
    /// or a 5xx other than 503 is [`ProviderError::Ambiguous`]; list by name before retrying.
    pub async fn create_subaccount(
        &self,
        friendly_name: &str,
    ) -> Result<SubAccount, ProviderError> {
        let url = self.accounts_url();
        let form = [("FriendlyName", friendly_name)];
        let response = http::send(
            PROVIDER,
            "create_subaccount",
            Idempotence::NonIdempotent,
            || self.request(reqwest::Method::POST, url.clone()).form(&form),
        )
        .await?;
        http::read_json(PROVIDER, Idempotence::NonIdempotent, response).await
    }

    /// Every account whose `FriendlyName` is exactly `friendly_name`, optionally only those in
    /// `status`, following `next_page_uri` across pages.
    pub async fn list_subaccounts(
        &self,
        friendly_name: &str,
        status: Option<AccountStatus>,
    ) -> Result<Vec<SubAccount>, ProviderError> {
        let mut url = self.accounts_url();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("FriendlyName", friendly_name);
            if let Some(status) = status {
                query.append_pair("Status", status.as_str());
            }
            query.append_pair(
                "PageSize",
                &self.config.page_size.clamp(1, 1000).to_string(),
            );
        }
        let mut accounts = Vec::new();
        for _ in 0..MAX_PAGES {
            let response = http::send(
                PROVIDER,
                "list_subaccounts",
                Idempotence::Idempotent,
                || self.request(reqwest::Method::GET, url.clone()),
            )
            .await?;
            let page: AccountPage =
                http::read_json(PROVIDER, Idempotence::Idempotent, response).await?;
            accounts.extend(page.accounts);
            match page.next_page_uri.filter(|next| !next.is_empty()) {
                None => return Ok(accounts),
                Some(next) => {
                    url = http::join_path(&self.config.base_url, &next).ok_or_else(|| {
                        ProviderError::Permanent {
                            status: 200,
                            code: None,
                            message: format!("{PROVIDER}: unusable next_page_uri {next:?}"),
                        }
                    })?;
                }
            }
        }
        Err(ProviderError::Permanent {
            status: 200,
            code: None,
            message: format!("{PROVIDER}: more than {MAX_PAGES} pages of accounts"),
        })
    }

    /// The account `sid`; an unknown (or auto-deleted) one is `Permanent` 404, see
    /// [`ProviderError::is_not_found`].
    pub async fn fetch_subaccount(&self, sid: &str) -> Result<SubAccount, ProviderError> {
        let url = self.account_url(sid);
        let response = http::send(
            PROVIDER,
            "fetch_subaccount",
            Idempotence::Idempotent,
            || self.request(reqwest::Method::GET, url.clone()),
        )
        .await?;
        http::read_json(PROVIDER, Idempotence::Idempotent, response).await
    }

    /// Sets the status of `sid` (`Closed` is irreversible: reopening answers `Permanent` 400).
    pub async fn update_status(
        &self,
        sid: &str,
        status: AccountStatus,
    ) -> Result<SubAccount, ProviderError> {
        let url = self.account_url(sid);
        let form = [("Status", status.as_str())];
        let response = http::send(PROVIDER, "update_status", Idempotence::Idempotent, || {
            self.request(reqwest::Method::POST, url.clone()).form(&form)
        })
        .await?;
        http::read_json(PROVIDER, Idempotence::Idempotent, response).await
    }
}
