//! The dashboard for tests: served on a free port against a test database, operators made
//! directly, and an HTTP client that logs in and carries the session cookie and CSRF token.

use std::net::SocketAddr;

use reqwest::StatusCode;
use reqwest::header::{COOKIE, HeaderMap};
use serde_json::Value;
use sqlx::PgPool;

/// A password every test operator has.
pub const PASSWORD: &str = "correct horse battery staple";

/// A dashboard serving in the background.
pub struct Dashboard {
    /// Its address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dashboard {
    /// Serves `dashboard::router` on a free port.
    pub async fn spawn(pool: PgPool) -> Dashboard {
        Self::spawn_with(pool, dashboard::Settings::default()).await
    }

    /// Serves with `settings`.
    pub async fn spawn_with(pool: PgPool, settings: dashboard::Settings) -> Dashboard {
        let app = dashboard::router(dashboard::DashboardState::new(pool, settings));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Dashboard { addr, task }
    }

    /// `http://addr/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Adds an operator with [`PASSWORD`].
pub async fn add_operator(pool: &PgPool, name: &str, role: dashboard::account::Role) {
    dashboard::account::add(pool, name, role, PASSWORD)
        .await
        .unwrap();
}

/// A plain client that never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `name=value` pair of a response's (first) `Set-Cookie`.
pub fn cookie_pair(response: &reqwest::Response) -> String {
    response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// A logged-in browser-like client: the session cookie and its CSRF token.
pub struct Session {
    /// The `onboard_session=…` cookie pair.
    pub cookie: String,
    /// The session's CSRF token.
    pub csrf: String,
    /// The raw `Set-Cookie` of the login.
    pub set_cookie: String,
    http: reqwest::Client,
    base: String,
}

/// A login form as a browser gets it: its pre-session cookie pair (`onboard_login=…`) and
/// the CSRF token of its hidden field.
pub async fn login_form(d: &Dashboard, headers: HeaderMap) -> (String, String) {
    let response = client()
        .get(d.url("/login"))
        .headers(headers)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = cookie_pair(&response);
    let page = response.text().await.unwrap();
    let field = "name=\"login_csrf\" value=\"";
    let start = page.find(field).expect("the form's CSRF field") + field.len();
    let token = page[start..].split('"').next().unwrap().to_owned();
    (cookie, token)
}

/// Gets the login form, then posts it as a browser would; returns the response.
pub async fn post_login(
    d: &Dashboard,
    name: &str,
    password: &str,
    headers: HeaderMap,
) -> reqwest::Response {
    let (cookie, token) = login_form(d, headers.clone()).await;
    client()
        .post(d.url("/login"))
        .headers(headers)
        .header(COOKIE, cookie)
        .form(&[
            ("name", name),
            ("password", password),
            ("next", "/jobs"),
            ("login_csrf", &token),
        ])
        .send()
        .await
        .unwrap()
}

impl Session {
    /// Logs in as `name` with [`PASSWORD`].
    pub async fn login(d: &Dashboard, name: &str) -> Session {
        let response = post_login(d, name, PASSWORD, HeaderMap::new()).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "login of {name}");
        let set_cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned();
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        let http = client();
        let me: Value = http
            .get(d.url("/api/me"))
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Session {
            cookie,
            csrf: me["csrf"].as_str().unwrap().to_owned(),
            set_cookie,
            http,
            base: d.url(""),
        }
    }

    /// GET with the cookie.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .unwrap()
    }

    /// GET, expecting `200` JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.unwrap()
    }

    /// An API POST with the cookie and `csrf` (None: no header) and a JSON body.
    pub async fn post_api(
        &self,
        path: &str,
        csrf: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie);
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// An API POST with the session's own CSRF token.
    pub async fn act(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let csrf = self.csrf.clone();
        self.post_api(path, Some(&csrf), body).await
    }

    /// A page form POST with fields.
    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie)
            .form(fields)
            .send()
            .await
            .unwrap()
    }
}

/// An API call with a Bearer token.
pub async fn bearer(
    d: &Dashboard,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client().request(method, d.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}
