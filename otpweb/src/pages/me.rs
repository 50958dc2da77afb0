//! `/me`: every logged-in person's own account: method, recent logins and
//! failures, new recovery codes, a new phone, the emailed-code address.
use super::audit::AuditRow;
use super::login::{flow_response, CsrfForm};
use super::view::{truth, Line, MessagePage, Page};
use super::{render, unexpected, AppState, Nav, PageError, Visitor};
use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::Form;
use common::proto::Method;
use common::web::{Overview, OwnRequest, WebResponse};
use serde::Deserialize;

#[derive(Template)]
#[template(path = "me.html")]
pub struct MePage {
    pub page: Page,
    pub csrf: String,
    /// None: no second factor is set up.
    pub method: Option<String>,
    pub totp: bool,
    pub activated: &'static str,
    pub email: String,
    pub recovery_codes_left: Option<u64>,
    pub may_set_email: bool,
    pub recent: Vec<AuditRow>,
}

impl MePage {
    pub fn new(nav: Nav, csrf: String, o: Overview) -> MePage {
        let user = o.user;
        MePage {
            page: Page::new("My account", nav),
            csrf,
            method: user.as_ref().map(|u| u.method.to_string()),
            totp: user.as_ref().is_some_and(|u| u.enabled && u.method == Method::Totp),
            activated: truth(user.as_ref().is_some_and(|u| u.activated)),
            email: user.as_ref().and_then(|u| u.email.clone()).unwrap_or_default(),
            recovery_codes_left: user.as_ref().and_then(|u| u.recovery_codes_left),
            may_set_email: o.may_set_email,
            recent: o.recent.into_iter().map(AuditRow::from).collect(),
        }
    }
}

pub async fn show(State(app): State<AppState>, visitor: Visitor) -> Result<Response, PageError> {
    let session = app.whoami(&visitor).await?;
    let nav = Nav::of(&session);
    match app.own(&visitor, &session, false, OwnRequest::Overview).await? {
        WebResponse::Overview { overview } => Ok(render(&MePage::new(nav, session.csrf, overview))),
        _ => Err(unexpected(&nav)),
    }
}

pub async fn recovery_codes(
    State(app): State<AppState>,
    visitor: Visitor,
    Form(f): Form<CsrfForm>,
) -> Result<Response, PageError> {
    let session = app.form_session(&visitor, &f.csrf).await?;
    let nav = Nav::of(&session);
    match app.own(&visitor, &session, true, OwnRequest::RecoveryCodes).await? {
        WebResponse::RecoveryCodes { codes } => Ok(render(
            &MessagePage::new("New recovery codes", nav)
                .line(Line::info("Your older recovery codes no longer work."))
                .codes(codes)
                .next("/me", "Back to my account"),
        )),
        _ => Err(unexpected(&nav)),
    }
}

/// Starts a re-enrollment: otpd's first step asks for a code from the
/// current authenticator; the answers go to `/login/answer` like a login's.
pub async fn reenroll(
    State(app): State<AppState>,
    visitor: Visitor,
    Form(f): Form<CsrfForm>,
) -> Result<Response, PageError> {
    let session = app.form_session(&visitor, &f.csrf).await?;
    let response = app.own(&visitor, &session, true, OwnRequest::Reenroll).await?;
    Ok(flow_response(response, Nav::of(&session)))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct EmailForm {
    csrf: String,
    address: String,
}

pub async fn set_email(
    State(app): State<AppState>,
    visitor: Visitor,
    Form(f): Form<EmailForm>,
) -> Result<Response, PageError> {
    let session = app.form_session(&visitor, &f.csrf).await?;
    let nav = Nav::of(&session);
    let address = f.address.trim();
    let request = OwnRequest::SetEmail { address: (!address.is_empty()).then(|| address.to_string()) };
    match app.own(&visitor, &session, true, request).await? {
        WebResponse::Done { message } => Ok(render(
            &MessagePage::new("Address saved", nav).line(Line::info(message)).next("/me", "Back to my account"),
        )),
        _ => Err(unexpected(&nav)),
    }
}
