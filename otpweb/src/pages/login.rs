//! Logging in: the password, then whatever second step otpd asks for (a
//! passcode, an enrollment, an emailed code, emergency access), then the
//! session cookie. The same step page serves a re-enrollment (`/me`).
use super::view::{Line, MessagePage, Page, Qr};
use super::{render, AppState, Failure, Nav, PageError, Visitor};
use crate::security::{self, FLOW_COOKIE, SESSION_COOKIE};
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use common::proto::OutcomeKind;
use common::web::{WebRequest, WebResponse};
use serde::Deserialize;

pub const BAD_LOGIN: &str = "Wrong user name or password.";
pub const SESSION_ENDED: &str = "Your session has ended; log in again.";

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub page: Page,
    pub user: String,
    pub notice: Option<String>,
    pub error: Option<String>,
}

impl LoginPage {
    fn new() -> LoginPage {
        LoginPage { page: Page::new("Log in", Nav::default()), user: String::new(), notice: None, error: None }
    }
}

/// A flow's prompt: the lines before it, the QR code of a pending
/// enrollment, one answer field, and the shortcuts the prompt offers.
#[derive(Template)]
#[template(path = "step.html")]
pub struct StepPage {
    pub page: Page,
    pub lines: Vec<Line>,
    pub prompt: String,
    pub secret_answer: bool,
    pub qr: Option<Qr>,
    pub offer_email: bool,
    pub offer_emergency: bool,
}

/// What otpd says a step offers besides its answer field.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offers {
    /// The answer may be shown as it is typed (an address, a reason).
    pub echo: bool,
    pub email: bool,
    pub emergency: bool,
}

impl StepPage {
    pub fn new(nav: Nav, lines: Vec<Line>, prompt: String, offers: Offers, enroll_uri: Option<String>) -> StepPage {
        StepPage {
            page: Page::new("Second step", nav),
            lines,
            secret_answer: !offers.echo,
            offer_email: offers.email,
            offer_emergency: offers.emergency,
            qr: enroll_uri.map(Qr::of),
            prompt,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Notices {
    ended: Option<String>,
    out: Option<String>,
    expired: Option<String>,
}

pub async fn form(Query(q): Query<Notices>) -> Response {
    let mut page = LoginPage::new();
    page.notice = if q.ended.is_some() {
        Some(SESSION_ENDED.into())
    } else if q.out.is_some() {
        Some("You have logged out.".into())
    } else if q.expired.is_some() {
        Some("That login has expired or was cancelled; start again.".into())
    } else {
        None
    };
    render(&page)
}

/// The login form. No `Debug`: it holds a password.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LoginForm {
    user: String,
    password: String,
}

pub async fn start(State(app): State<AppState>, visitor: Visitor, Form(f): Form<LoginForm>) -> Response {
    let user = f.user.trim().to_string();
    let refuse = |status: StatusCode, message: &str, user: &str| {
        let mut page = LoginPage::new();
        page.user = user.to_string();
        page.error = Some(message.to_string());
        (status, render(&page)).into_response()
    };
    if user.is_empty() || f.password.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "Enter your user name and your password.", &user);
    }
    if user.len() > common::proto::MAX_USER_LEN || user.chars().any(char::is_control) {
        return refuse(StatusCode::UNAUTHORIZED, BAD_LOGIN, "");
    }
    let request = WebRequest::LoginStart { client: visitor.client.clone(), user: user.clone(), password: f.password };
    match app.call(&request).await {
        Ok(response) => flow_response(response, Nav::default()),
        Err(PageError { failure: Failure::Refused { status, message }, .. }) => match status {
            StatusCode::UNAUTHORIZED => refuse(status, BAD_LOGIN, &user),
            _ => refuse(status, &message, &user),
        },
        Err(PageError { failure: Failure::Unreachable, .. }) => {
            refuse(StatusCode::SERVICE_UNAVAILABLE, "Logins are not possible right now; try again in a moment.", &user)
        }
        Err(e) => e.into_response(),
    }
}

/// An answer to a step. No `Debug`: it holds a passcode.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct AnswerForm {
    text: String,
    /// Which button: `email` answers empty (send me a code), `emergency`
    /// answers `E`; anything else sends the typed text.
    choice: String,
}

pub async fn answer(State(app): State<AppState>, visitor: Visitor, Form(f): Form<AnswerForm>) -> Response {
    let Some(flow) = visitor.flow.clone() else { return flow_expired() };
    let text = match f.choice.as_str() {
        "email" => String::new(),
        "emergency" => "E".to_string(),
        _ => f.text,
    };
    // A re-enrollment's step keeps the layout of the session it runs in.
    let nav = match visitor.session {
        Some(_) => app.whoami(&visitor).await.map(|s| Nav::of(&s)).unwrap_or_default(),
        None => Nav::default(),
    };
    match app.call(&WebRequest::Answer { client: visitor.client.clone(), flow, text }).await {
        Ok(response) => flow_response(response, nav),
        Err(PageError { failure: Failure::SessionEnded, .. }) => flow_expired(),
        Err(e) => {
            let mut r = e.with_nav(&nav).into_response();
            r.headers_mut().append(header::SET_COOKIE, security::clear_cookie(FLOW_COOKIE));
            r
        }
    }
}

pub async fn cancel(State(app): State<AppState>, visitor: Visitor) -> Response {
    if let Some(flow) = visitor.flow.clone() {
        // Whatever otpd says, the browser leaves the flow.
        let _ = app.call(&WebRequest::Cancel { client: visitor.client.clone(), flow }).await;
    }
    with_cookie(Redirect::to("/").into_response(), security::clear_cookie(FLOW_COOKIE))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CsrfForm {
    pub csrf: String,
}

pub async fn logout(State(app): State<AppState>, visitor: Visitor, Form(f): Form<CsrfForm>) -> Response {
    let session = match app.form_session(&visitor, &f.csrf).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let token = visitor.session.clone().unwrap_or_default();
    let request = WebRequest::Logout { client: visitor.client.clone(), session: token };
    if let Err(e) = app.call(&request).await {
        return e.with_nav(&Nav::of(&session)).into_response();
    }
    with_cookie(Redirect::to("/login?out=1").into_response(), security::clear_cookie(SESSION_COOKIE))
}

fn flow_expired() -> Response {
    with_cookie(Redirect::to("/login?expired=1").into_response(), security::clear_cookie(FLOW_COOKIE))
}

fn with_cookie(mut response: Response, cookie: HeaderValue) -> Response {
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

/// What the browser sees after a login's or re-enrollment's step.
pub fn flow_response(response: WebResponse, nav: Nav) -> Response {
    match response {
        WebResponse::Step { flow, lines, prompt, echo, offers_email, offers_emergency, enroll_uri } => {
            let Some(cookie) = security::cookie(FLOW_COOKIE, &flow) else {
                return super::unexpected(&nav).into_response();
            };
            let offers = Offers { echo, email: offers_email, emergency: offers_emergency };
            let page = StepPage::new(nav, lines.into_iter().map(Line::from).collect(), prompt, offers, enroll_uri);
            with_cookie(render(&page), cookie)
        }
        WebResponse::Ended { lines, outcome, message } => {
            let title = match outcome {
                OutcomeKind::Accept => "Done",
                OutcomeKind::Deny => "Login refused",
                OutcomeKind::Locked => "Account locked",
                OutcomeKind::NotEnrolled => "No second factor",
            };
            let failed = outcome != OutcomeKind::Accept;
            let lines = lines.into_iter().map(Line::from).chain(message.map(|m| Line { error: failed, text: m }));
            let (href, text) =
                if nav.user.is_some() { ("/me", "Back to my account") } else { ("/login", "Back to the login page") };
            let page = MessagePage::new(title, nav).lines(lines).next(href, text);
            with_cookie(render(&page), security::clear_cookie(FLOW_COOKIE))
        }
        WebResponse::Session { session, token, lines } => {
            let Some(cookie) = security::cookie(SESSION_COOKIE, &token) else {
                return super::unexpected(&nav).into_response();
            };
            let home = if session.admin { "/" } else { "/me" };
            let response = if lines.is_empty() {
                Redirect::to(home).into_response()
            } else {
                let page = MessagePage::new("Logged in", Nav::of(&session))
                    .lines(lines.into_iter().map(Line::from))
                    .next(home, "Continue");
                render(&page)
            };
            with_cookie(with_cookie(response, cookie), security::clear_cookie(FLOW_COOKIE))
        }
        WebResponse::Reenrolled { lines } => {
            let page = MessagePage::new("New authenticator active", nav)
                .lines(lines.into_iter().map(Line::from))
                .next("/me", "Back to my account");
            with_cookie(render(&page), security::clear_cookie(FLOW_COOKIE))
        }
        _ => super::unexpected(&nav).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otpds_offers_decide_the_shortcuts_and_the_field() {
        let email = Offers { email: true, ..Offers::default() };
        let p = StepPage::new(Nav::default(), vec![], "Passcode: ".into(), email, None);
        assert!(p.offer_email && !p.offer_emergency && p.secret_answer);
        let emergency = Offers { emergency: true, ..Offers::default() };
        let p = StepPage::new(Nav::default(), vec![], "Passcode: ".into(), emergency, None);
        assert!(!p.offer_email && p.offer_emergency);
        let echo = Offers { echo: true, ..Offers::default() };
        let p = StepPage::new(Nav::default(), vec![], "Your email address: ".into(), echo, None);
        assert!(!p.secret_answer);
    }

    #[test]
    fn the_step_page_shows_lines_prompt_and_qr() {
        let lines = vec![Line::error("Wrong code <b>"), Line::info("Scan this")];
        let uri = "otpauth://totp/x:alice?secret=JBSWY3DPEHPK3PXP&issuer=x".to_string();
        let page = StepPage::new(Nav::default(), lines, "Passcode: ".into(), Offers::default(), Some(uri));
        let html = page.render().unwrap_or_default();
        assert!(html.contains(r#"<p class="error" role="alert">Wrong code &#60;b&#62;</p>"#), "{html}");
        assert!(html.contains(r#"autocomplete="one-time-code""#) && html.contains(r#"type="password""#));
        assert!(html.contains("<svg class=\"qr\""));
        assert!(html.contains("otpauth://totp/x:alice?secret=JBSWY3DPEHPK3PXP&#38;issuer=x"), "URI as escaped text");
        assert!(html.contains(r#"<label for="answer">Passcode: </label>"#));
    }
}
