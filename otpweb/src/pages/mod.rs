//! The console's screens, one module each, and what they share: who is
//! asking (the browser's address and cookies), the calls to otpd and how
//! otpd's refusals become pages.
pub mod audit;
pub mod dashboard;
pub mod hosts;
pub mod login;
pub mod me;
pub mod requests;
pub mod sessions;
pub mod users;
pub mod view;

use crate::otpd::Otpd;
use crate::security::{self, OriginPolicy, SESSION_COOKIE};
use askama::Template;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{middleware, Router};
use common::proto::{AdminErrorKind, AdminRequest, AdminResponse};
use common::web::{Client, OwnRequest, SessionView, WebErrorKind, WebRequest, WebResponse};
use std::net::SocketAddr;
use view::{Line, MessagePage};

/// Largest request body: forms are small; nothing is uploaded.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub otpd: Otpd,
}

/// Every route. Security headers wrap everything (refusals included); the
/// Origin check runs before any handler, so a refused POST reaches no otpd.
///
/// What each sends to otpd (pages that show a session first send `whoami`;
/// POSTs of a session compare the form's CSRF token with it first):
/// - `/login` POST: `login_start`; `/login/answer`: `answer` (the flow
///   cookie); `/login/cancel`: `cancel`; `/logout`: `logout`.
/// - `/`: admin `status`; `/users`: `user_list` (GET) or `user_enable`
///   (POST); `/users/{name}`: `user_show` + `audit`; `/users/{name}/{action}`:
///   `user_enable|user_disable|user_reset|user_unlock|user_recovery_codes`.
/// - `/requests`, `/requests/live`: `request_list`; `/requests/{id}/{approve|deny}`.
/// - `/sessions`: `sessions`; `/audit`: `audit`; `/hosts`: `host_list` (GET)
///   or `host_add` (POST, the bundle downloads); `/hosts/{name}/revoke`.
/// - `/me`: own `overview`; `/me/recovery-codes`, `/me/reenroll` (then
///   `/login/answer`), `/me/email`: own `recovery_codes|reenroll|set_email`.
pub fn router(otpd: Otpd, origin: Option<String>) -> Router {
    Router::new()
        .route("/", get(dashboard::show))
        .route("/login", get(login::form).post(login::start))
        .route("/login/answer", post(login::answer))
        .route("/login/cancel", post(login::cancel))
        .route("/logout", post(login::logout))
        .route("/me", get(me::show))
        .route("/me/recovery-codes", post(me::recovery_codes))
        .route("/me/reenroll", post(me::reenroll))
        .route("/me/email", post(me::set_email))
        .route("/users", get(users::list).post(users::enable_new))
        .route("/users/{name}", get(users::show))
        .route("/users/{name}/{action}", post(users::act))
        .route("/requests", get(requests::list))
        .route("/requests/live", get(requests::live))
        .route("/requests/{id}/{decision}", post(requests::decide))
        .route("/sessions", get(sessions::list))
        .route("/audit", get(audit::list))
        .route("/hosts", get(hosts::list).post(hosts::add))
        .route("/hosts/{name}/revoke", post(hosts::revoke))
        .route("/static/style.css", get(crate::assets::style))
        .route("/static/requests.js", get(crate::assets::script))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(OriginPolicy(origin), security::origin_guard))
        .layer(middleware::from_fn(security::headers_layer))
        .with_state(AppState { otpd })
}

/// Who is asking: the browser's address and the console cookies it sent.
pub struct Visitor {
    pub client: Client,
    pub session: Option<String>,
    pub flow: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip().to_canonical().to_string())
            .unwrap_or_else(|| "unknown".into());
        Ok(Visitor {
            client: Client { addr },
            session: security::read_cookie(&parts.headers, SESSION_COOKIE),
            flow: security::read_cookie(&parts.headers, security::FLOW_COOKIE),
        })
    }
}

/// What the layout shows about the person logged in.
#[derive(Debug, Clone, Default)]
pub struct Nav {
    pub user: Option<String>,
    pub admin: bool,
    pub csrf: Option<String>,
}

impl Nav {
    pub fn of(session: &SessionView) -> Nav {
        Nav { user: Some(session.user.clone()), admin: session.admin, csrf: Some(session.csrf.clone()) }
    }
}

/// Why a page could not be shown as asked.
#[derive(Debug)]
pub enum Failure {
    /// No session cookie: the login page.
    NoSession,
    /// otpd no longer knows the session: the login page, with a word why.
    SessionEnded,
    Csrf,
    Forbidden,
    /// otpd (or otpweb, for input it can tell is bad) said no; nothing changed.
    Refused {
        status: StatusCode,
        message: String,
    },
    Unreachable,
}

#[derive(Debug)]
pub struct PageError {
    pub failure: Failure,
    pub nav: Nav,
}

impl PageError {
    pub fn new(failure: Failure) -> PageError {
        PageError { failure, nav: Nav::default() }
    }

    pub fn invalid(message: impl Into<String>) -> PageError {
        PageError::new(Failure::Refused { status: StatusCode::BAD_REQUEST, message: message.into() })
    }

    pub fn with_nav(mut self, nav: &Nav) -> PageError {
        self.nav = nav.clone();
        self
    }

    /// otpd's word on a web request.
    fn from_web(kind: WebErrorKind, message: String) -> PageError {
        let status = match kind {
            WebErrorKind::Unauthenticated => return PageError::new(Failure::SessionEnded),
            WebErrorKind::Forbidden => return PageError::new(Failure::Forbidden),
            WebErrorKind::Csrf => return PageError::new(Failure::Csrf),
            WebErrorKind::BadLogin => StatusCode::UNAUTHORIZED,
            WebErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
            WebErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            WebErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        PageError::new(Failure::Refused { status, message })
    }

    /// otpd's word on an admin request.
    fn from_admin(kind: AdminErrorKind, message: String) -> PageError {
        let status = match kind {
            AdminErrorKind::PermissionDenied => return PageError::new(Failure::Forbidden),
            AdminErrorKind::NotFound => StatusCode::NOT_FOUND,
            AdminErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
            AdminErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        PageError::new(Failure::Refused { status, message })
    }

    fn unexpected() -> PageError {
        PageError::new(Failure::Refused {
            status: StatusCode::BAD_GATEWAY,
            message: "otpd gave an answer this console does not understand (are both the same version?)".into(),
        })
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self.failure {
            Failure::NoSession => return Redirect::to("/login").into_response(),
            Failure::SessionEnded => {
                let mut r = Redirect::to("/login?ended=1").into_response();
                r.headers_mut().append(header::SET_COOKIE, security::clear_cookie(SESSION_COOKIE));
                return r;
            }
            Failure::Csrf => (
                StatusCode::FORBIDDEN,
                "Form expired",
                "This form was stale or did not come from this console. Reload the page and try again.".to_string(),
            ),
            Failure::Forbidden => {
                (StatusCode::FORBIDDEN, "Not allowed", "Only administrators can use this page.".to_string())
            }
            Failure::Refused { status, message } => (status, "Not done", message),
            Failure::Unreachable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The OTP daemon cannot be reached right now. Try again in a moment.".to_string(),
            ),
        };
        let page = MessagePage::new(title, self.nav).line(Line::error(message));
        (status, render(&page)).into_response()
    }
}

/// The answer to a POST whose Origin is not this console's.
pub fn cross_site_refused() -> Response {
    let page = MessagePage::new("Refused", Nav::default()).line(Line::error("cross-site request refused"));
    (StatusCode::FORBIDDEN, render(&page)).into_response()
}

async fn not_found() -> Response {
    let page = MessagePage::new("Not found", Nav::default()).line(Line::error("There is no such page."));
    (StatusCode::NOT_FOUND, render(&page)).into_response()
}

pub fn render<T: Template>(template: &T) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!("rendering a page: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "The page could not be drawn.").into_response()
        }
    }
}

impl AppState {
    /// One request to otpd; its error answers become [`PageError`]s.
    pub async fn call(&self, request: &WebRequest) -> Result<WebResponse, PageError> {
        match self.otpd.call(request).await {
            Ok(WebResponse::Error { kind, message }) => Err(PageError::from_web(kind, message)),
            Ok(response) => Ok(response),
            Err(e) => {
                tracing::error!("{e}");
                Err(PageError::new(Failure::Unreachable))
            }
        }
    }

    /// The live session behind the visitor's cookie.
    pub async fn whoami(&self, visitor: &Visitor) -> Result<SessionView, PageError> {
        let Some(session) = visitor.session.clone() else { return Err(PageError::new(Failure::NoSession)) };
        match self.call(&WebRequest::Whoami { client: visitor.client.clone(), session }).await? {
            WebResponse::Me { session } => Ok(session),
            _ => Err(PageError::unexpected()),
        }
    }

    /// The session, for a page only administrators use: others are turned
    /// away here too (otpd refuses them anyway).
    pub async fn admin_session(&self, visitor: &Visitor) -> Result<SessionView, PageError> {
        let session = self.whoami(visitor).await?;
        if !session.admin {
            return Err(PageError::new(Failure::Forbidden).with_nav(&Nav::of(&session)));
        }
        Ok(session)
    }

    /// The session behind a submitted form, whose CSRF token must be the
    /// session's (checked here, and again by otpd on Admin/Own requests).
    pub async fn form_session(&self, visitor: &Visitor, csrf: &str) -> Result<SessionView, PageError> {
        let session = self.whoami(visitor).await?;
        if !security::csrf_matches(&session.csrf, csrf) {
            tracing::warn!(client = %visitor.client.addr, "form with a wrong CSRF token refused");
            return Err(PageError::new(Failure::Csrf).with_nav(&Nav::of(&session)));
        }
        Ok(session)
    }

    /// An admin request; `csrf` for those that change something.
    pub async fn admin(
        &self,
        visitor: &Visitor,
        session: &SessionView,
        csrf: bool,
        request: AdminRequest,
    ) -> Result<AdminResponse, PageError> {
        let nav = Nav::of(session);
        let token = visitor.session.clone().unwrap_or_default();
        let csrf = csrf.then(|| session.csrf.clone());
        let request =
            WebRequest::Admin { client: visitor.client.clone(), session: token, csrf, request, passive: false };
        match self.call(&request).await.map_err(|e| e.with_nav(&nav))? {
            WebResponse::Admin { response: AdminResponse::Error { kind, message } } => {
                Err(PageError::from_admin(kind, message).with_nav(&nav))
            }
            WebResponse::Admin { response } => Ok(response),
            _ => Err(PageError::unexpected().with_nav(&nav)),
        }
    }

    /// A self-service request; `csrf` for those that change something.
    pub async fn own(
        &self,
        visitor: &Visitor,
        session: &SessionView,
        csrf: bool,
        request: OwnRequest,
    ) -> Result<WebResponse, PageError> {
        let token = visitor.session.clone().unwrap_or_default();
        let csrf = csrf.then(|| session.csrf.clone());
        let request = WebRequest::Own { client: visitor.client.clone(), session: token, csrf, request };
        self.call(&request).await.map_err(|e| e.with_nav(&Nav::of(session)))
    }
}

/// An admin answer a page did not expect (otpd answered another question).
pub fn unexpected(nav: &Nav) -> PageError {
    PageError::unexpected().with_nav(nav)
}

#[cfg(test)]
mod tests {
    //! The router with no otpd behind it: what must hold before otpd is asked.
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn app() -> Router {
        // No socket there: a request that reached otpd would get "unavailable".
        router(Otpd::new("/nonexistent/otpweb-test.sock".into()), None)
    }

    async fn send(request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
        let response = app().oneshot(request).await.unwrap_or_else(|e| match e {});
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20).await.map(|b| b.to_vec()).unwrap_or_default();
        (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
    }

    fn post(path: &str, origin: Option<&str>, body: &str) -> Request<Body> {
        let mut r = Request::post(path)
            .header("host", "otp.example.org")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", "__Host-otpweb=SESSION");
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.body(Body::from(body.to_string())).unwrap_or_default()
    }

    #[tokio::test]
    async fn cross_site_posts_are_refused_before_otpd() {
        for origin in [None, Some("https://evil.example"), Some("null")] {
            for path in ["/login", "/users/bob/reset", "/logout", "/hosts", "/requests/1/approve"] {
                let (status, headers, body) = send(post(path, origin, "csrf=x&user=a&password=b")).await;
                assert_eq!(status, StatusCode::FORBIDDEN, "{path} from {origin:?}");
                assert!(body.contains("cross-site request refused"), "{body}");
                assert!(headers.contains_key("content-security-policy"));
            }
        }
        // The same POST from the console's own origin does reach otpd (absent here).
        let (status, _, _) = send(post("/users/bob/reset", Some("https://otp.example.org"), "csrf=x")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn pages_carry_the_headers_and_need_a_session() {
        let get =
            |path: &str| Request::get(path).header("host", "otp.example.org").body(Body::empty()).unwrap_or_default();
        let (status, headers, body) = send(get("/login")).await;
        assert_eq!(status, StatusCode::OK);
        for h in ["content-security-policy", "strict-transport-security", "x-frame-options", "referrer-policy"] {
            assert!(headers.contains_key(h), "{h}");
        }
        assert_eq!(headers.get("cache-control").map(|v| v.as_bytes()), Some(&b"no-store"[..]));
        assert!(body.contains(r#"<html lang="en">"#) && body.contains(r#"<label for="password">"#));
        assert!(!body.contains("style=") && !body.contains("<script>"), "nothing inline");
        for path in ["/", "/users", "/audit", "/me", "/hosts"] {
            let (status, headers, _) = send(get(path)).await;
            assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
            assert_eq!(headers.get("location").map(|v| v.as_bytes()), Some(&b"/login"[..]));
        }
        let (status, headers, body) = send(get("/static/requests.js")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers.get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"text/javascript")));
        assert!(!body.contains("innerHTML"), "rows are built with DOM methods and textContent");
        let (status, headers, _) = send(get("/no/such/page")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(headers.contains_key("content-security-policy"));
    }

    #[tokio::test]
    async fn large_bodies_are_refused() {
        let big = format!("user=a&password={}", "x".repeat(BODY_LIMIT + 1));
        let (status, _, _) = send(post("/login", Some("https://otp.example.org"), &big)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn the_live_list_answers_json_without_a_session() {
        let r = Request::get("/requests/live").body(Body::empty()).unwrap_or_default();
        let (status, headers, body) = send(r).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/json")));
        assert!(body.contains("Your session has ended"));
    }
}
