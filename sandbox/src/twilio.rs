//! The Twilio Accounts API (2010-04-01): create, list, fetch and update accounts with HTTP Basic
//! auth (main account SID + auth token), form-encoded bodies, `.json` paths and Twilio's legacy
//! JSON error bodies.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use serde_json::{Value, json};

use crate::magic::{self, FLAKY_FAILURES, TwilioMagic};
use crate::state::{Account, AccountStatus, Action, Data, Provider, SandboxState};

/// Twilio's "invalid parameter" family; the sandbox uses it for every validation failure.
const INVALID_PARAMETER: u32 = 20001;
/// Twilio's "authenticate" error.
const AUTHENTICATE: u32 = 20003;
/// Twilio's "not found" error.
const NOT_FOUND: u32 = 20404;
/// Twilio's "service unavailable" error.
const UNAVAILABLE: u32 = 20503;
/// Longest `FriendlyName` Twilio accepts.
const MAX_FRIENDLY_NAME: usize = 64;
/// Page size when `PageSize` is absent.
const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page Twilio serves.
const MAX_PAGE_SIZE: usize = 1000;
const ACCOUNTS_PATH: &str = "/2010-04-01/Accounts.json";

/// The Twilio routes.
pub(crate) fn routes() -> Router<SandboxState> {
    Router::new()
        .route(ACCOUNTS_PATH, get(list_accounts).post(create_account))
        .route(
            "/2010-04-01/Accounts/{sid}",
            get(fetch_account).post(update_account),
        )
}

/// A legacy Twilio error body: `{"code","message","more_info","status"}`.
pub(crate) fn error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, axum::Json(body)).into_response()
}

fn unauthorized() -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, AUTHENTICATE, "Authenticate");
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Twilio API\""),
    );
    response
}

fn not_found(path: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        NOT_FOUND,
        &format!("The requested resource {path} was not found"),
    )
}

fn invalid(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, INVALID_PARAMETER, message)
}

/// Whether the request carries the main account's Basic credentials.
fn authenticated(state: &SandboxState, headers: &HeaderMap) -> bool {
    let config = state.config();
    let Some(encoded) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return false;
    };
    decoded.split_once(':').is_some_and(|(user, password)| {
        user == config.twilio_account_sid && password == config.twilio_auth_token
    })
}

type Form = Vec<(String, String)>;

fn parse_form(body: &[u8]) -> Option<Form> {
    serde_urlencoded::from_bytes(body).ok()
}

/// The first value of `name`, if present and not empty.
fn param<'a>(form: &'a Form, name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
        .filter(|value| !value.is_empty())
}

fn account_path(sid: &str) -> String {
    format!("/2010-04-01/Accounts/{sid}.json")
}

/// An account as Twilio renders it.
fn account_json(account: &Account) -> Value {
    let sid = &account.sid;
    let sub = |name: &str| format!("/2010-04-01/Accounts/{sid}/{name}.json");
    json!({
        "auth_token": account.auth_token,
        "date_created": account.date_created.to_rfc2822(),
        "date_updated": account.date_updated.to_rfc2822(),
        "friendly_name": account.friendly_name,
        "owner_account_sid": account.owner_account_sid,
        "sid": sid,
        "status": account.status.as_str(),
        "subresource_uris": {
            "addresses": sub("Addresses"),
            "calls": sub("Calls"),
            "incoming_phone_numbers": sub("IncomingPhoneNumbers"),
            "keys": sub("Keys"),
            "messages": sub("Messages"),
            "usage": sub("Usage"),
        },
        "type": "Full",
        "uri": account_path(sid),
    })
}

/// Twilio's default name for an unnamed sub-account.
fn default_friendly_name() -> String {
    format!(
        "SubAccount Created at {}",
        Utc::now().format("%Y-%m-%d %I:%M %P")
    )
}

/// Creates a sub-account and records the 201.
fn create(data: &mut Data, friendly_name: &str) -> Account {
    let now = Utc::now();
    let account = Account {
        sid: format!("AC{}", uuid::Uuid::new_v4().simple()),
        friendly_name: friendly_name.to_owned(),
        status: AccountStatus::Active,
        auth_token: uuid::Uuid::new_v4().simple().to_string(),
        owner_account_sid: data.main.sid.clone(),
        date_created: now,
        date_updated: now,
    };
    data.accounts.push(account.clone());
    data.record(
        Provider::Twilio,
        Action::CreateSubaccount,
        friendly_name,
        Some(account.sid.clone()),
        201,
    );
    account
}

/// `POST /2010-04-01/Accounts.json`.
async fn create_account(
    State(state): State<SandboxState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let form = body.ok().as_deref().and_then(parse_form);
    let name = form
        .as_ref()
        .and_then(|form| param(form, "FriendlyName"))
        .map_or_else(default_friendly_name, str::to_owned);
    let fail = |status: StatusCode, response: Response| {
        state.record(
            Provider::Twilio,
            Action::CreateSubaccount,
            name.clone(),
            None,
            status.as_u16(),
        );
        response
    };
    if !authenticated(&state, &headers) {
        return fail(StatusCode::UNAUTHORIZED, unauthorized());
    }
    if form.is_none() {
        return fail(
            StatusCode::BAD_REQUEST,
            invalid("The request body is not a valid form"),
        );
    }
    if name.chars().count() > MAX_FRIENDLY_NAME {
        return fail(
            StatusCode::BAD_REQUEST,
            invalid("FriendlyName must be at most 64 characters"),
        );
    }

    // Playing Clerk, learn the org's current slug first (the worker sends Twilio only `org:<id>`).
    if let (Some(lookup), Some(org_id)) = (
        state.config().slug_lookup.clone(),
        name.strip_prefix(magic::ORG_PREFIX),
    ) && let Some(slug) = lookup(org_id.to_owned()).await
    {
        state.register(org_id, &slug);
    }

    // Decide and act under one lock: the account exists before any (slow) answer is sent.
    let (account, slow) = {
        let mut data = state.lock();
        match magic::twilio(&data, &name) {
            Some(TwilioMagic::Fail) => {
                data.record(Provider::Twilio, Action::CreateSubaccount, &name, None, 400);
                return invalid("Sandbox magic -fail-twilio: sub-account creation refused");
            }
            Some(TwilioMagic::Flaky) => {
                let failures = data.flaky_creates.entry(name.clone()).or_default();
                if *failures < FLAKY_FAILURES {
                    *failures += 1;
                    data.record(Provider::Twilio, Action::CreateSubaccount, &name, None, 503);
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        UNAVAILABLE,
                        "Service Unavailable (sandbox magic -flaky-twilio)",
                    );
                }
                (create(&mut data, &name), false)
            }
            Some(TwilioMagic::Slow) => (create(&mut data, &name), true),
            None => (create(&mut data, &name), false),
        }
    };
    if slow {
        state.wait_slow().await;
    }
    (StatusCode::CREATED, axum::Json(account_json(&account))).into_response()
}

/// `GET /2010-04-01/Accounts.json?FriendlyName=…&Status=…&PageSize=…&Page=…`.
async fn list_accounts(
    State(state): State<SandboxState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if !authenticated(&state, &headers) {
        return unauthorized();
    }
    let Ok(query) = serde_urlencoded::from_str::<Form>(query.as_deref().unwrap_or_default()) else {
        return invalid("The query string is not valid");
    };
    let friendly_name = param(&query, "FriendlyName");
    let status = match param(&query, "Status") {
        None => None,
        Some(value) => match AccountStatus::parse(value) {
            Some(status) => Some(status),
            None => return invalid("Status must be one of active, suspended, closed"),
        },
    };
    let page_size = match param(&query, "PageSize").map(str::parse::<usize>) {
        None => DEFAULT_PAGE_SIZE,
        Some(Ok(size)) => size.clamp(1, MAX_PAGE_SIZE),
        Some(Err(_)) => return invalid("PageSize must be a positive integer"),
    };
    let page = match param(&query, "Page").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(page)) => page,
        Some(Err(_)) => return invalid("Page must be a non-negative integer"),
    };

    let matching: Vec<Value> = {
        let data = state.lock();
        std::iter::once(&data.main)
            .chain(&data.accounts)
            .filter(|account| friendly_name.is_none_or(|name| account.friendly_name == name))
            .filter(|account| status.is_none_or(|status| account.status == status))
            .map(account_json)
            .collect()
    };
    let start = page.saturating_mul(page_size);
    let accounts: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(page_size)
        .cloned()
        .collect();
    let has_next = start.saturating_add(page_size) < matching.len();

    let mut filters: Vec<(&str, String)> = Vec::new();
    if let Some(name) = friendly_name {
        filters.push(("FriendlyName", name.to_owned()));
    }
    if let Some(status) = status {
        filters.push(("Status", status.as_str().to_owned()));
    }
    let page_uri = |page: usize| {
        let mut pairs = filters.clone();
        pairs.push(("PageSize", page_size.to_string()));
        pairs.push(("Page", page.to_string()));
        if page > 0 {
            pairs.push(("PageToken", format!("PA{}", page.saturating_mul(page_size))));
        }
        let query = serde_urlencoded::to_string(pairs).unwrap_or_default();
        format!("{ACCOUNTS_PATH}?{query}")
    };
    let body = json!({
        "accounts": accounts,
        "end": (start + accounts.len()).saturating_sub(1),
        "first_page_uri": page_uri(0),
        "next_page_uri": has_next.then(|| page_uri(page + 1)),
        "page": page,
        "page_size": page_size,
        "previous_page_uri": (page > 0).then(|| page_uri(page - 1)),
        "start": start,
        "uri": page_uri(page),
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// The SID in `{Sid}.json`, if the segment has that form.
fn sid_of(segment: &Result<Path<String>, PathRejection>) -> Option<&str> {
    segment
        .as_ref()
        .ok()
        .and_then(|Path(segment)| segment.strip_suffix(".json"))
        .filter(|sid| !sid.is_empty())
}

/// `GET /2010-04-01/Accounts/{Sid}.json`.
async fn fetch_account(
    State(state): State<SandboxState>,
    headers: HeaderMap,
    segment: Result<Path<String>, PathRejection>,
) -> Response {
    if !authenticated(&state, &headers) {
        return unauthorized();
    }
    let Some(sid) = sid_of(&segment) else {
        return not_found("/2010-04-01/Accounts");
    };
    let data = state.lock();
    match std::iter::once(&data.main)
        .chain(&data.accounts)
        .find(|account| account.sid == sid)
    {
        Some(account) => (StatusCode::OK, axum::Json(account_json(account))).into_response(),
        None => not_found(&account_path(sid)),
    }
}

/// `POST /2010-04-01/Accounts/{Sid}.json` with `Status` and/or `FriendlyName`.
async fn update_account(
    State(state): State<SandboxState>,
    headers: HeaderMap,
    segment: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let form = body.ok().as_deref().and_then(parse_form);
    let requested = form.as_ref().and_then(|form| param(form, "Status"));
    let action = match requested {
        Some("suspended") => Action::SuspendSubaccount,
        Some("closed") => Action::CloseSubaccount,
        Some("active") => Action::ActivateSubaccount,
        _ => Action::UpdateSubaccount,
    };
    let sid = sid_of(&segment).unwrap_or_default().to_owned();
    let fail = |status: StatusCode, key: &str, response: Response| {
        state.record(
            Provider::Twilio,
            action,
            key.to_owned(),
            None,
            status.as_u16(),
        );
        response
    };
    if !authenticated(&state, &headers) {
        return fail(StatusCode::UNAUTHORIZED, &sid, unauthorized());
    }
    if sid.is_empty() {
        return fail(
            StatusCode::NOT_FOUND,
            &sid,
            not_found("/2010-04-01/Accounts"),
        );
    }
    let Some(form) = form.as_ref() else {
        return fail(
            StatusCode::BAD_REQUEST,
            &sid,
            invalid("The request body is not a valid form"),
        );
    };
    let status = match requested.map(AccountStatus::parse) {
        None => None,
        Some(Some(status)) => Some(status),
        Some(None) => {
            return fail(
                StatusCode::BAD_REQUEST,
                &sid,
                invalid("Status must be one of active, suspended, closed"),
            );
        }
    };
    let rename = param(form, "FriendlyName");
    if rename.is_some_and(|name| name.chars().count() > MAX_FRIENDLY_NAME) {
        return fail(
            StatusCode::BAD_REQUEST,
            &sid,
            invalid("FriendlyName must be at most 64 characters"),
        );
    }

    let mut data = state.lock();
    if sid == data.main.sid {
        let key = data.main.friendly_name.clone();
        data.record(Provider::Twilio, action, key, None, 400);
        return invalid("The sandbox main account cannot be updated");
    }
    let Some(index) = data.accounts.iter().position(|account| account.sid == sid) else {
        data.record(Provider::Twilio, action, &sid, None, 404);
        return not_found(&account_path(&sid));
    };
    let key = data.accounts[index].friendly_name.clone();
    if data.accounts[index].status == AccountStatus::Closed
        && status.is_some_and(|status| status != AccountStatus::Closed)
    {
        data.record(Provider::Twilio, action, key, None, 400);
        return invalid("A closed account cannot be reopened");
    }
    let account = &mut data.accounts[index];
    if let Some(status) = status {
        account.status = status;
    }
    if let Some(name) = rename {
        name.clone_into(&mut account.friendly_name);
    }
    account.date_updated = Utc::now();
    let body = account_json(account);
    data.record(Provider::Twilio, action, key, Some(sid), 200);
    (StatusCode::OK, axum::Json(body)).into_response()
}
