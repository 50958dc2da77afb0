//! `/requests`: emergency access requests waiting for an administrator,
//! kept current by `/static/requests.js` polling `/requests/live`.
use super::login::CsrfForm;
use super::view::{outcome_page, when, Page};
use super::{render, unexpected, AppState, Failure, Nav, PageError, Visitor};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use common::proto::{AdminRequest, AdminResponse, RequestInfo, RequestStatus};
use common::web::{WebRequest, WebResponse};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct RequestRow {
    pub id: i64,
    pub user: String,
    pub machine: String,
    pub address: String,
    pub reason: String,
    pub origin: String,
    pub created: String,
}

impl From<RequestInfo> for RequestRow {
    fn from(r: RequestInfo) -> RequestRow {
        RequestRow {
            id: r.id,
            user: r.user,
            machine: r.machine,
            address: r.address,
            reason: r.reason,
            origin: r.origin,
            created: when(r.created_at),
        }
    }
}

fn pending(requests: Vec<RequestInfo>) -> Vec<RequestRow> {
    requests.into_iter().filter(|r| r.status == RequestStatus::Pending).map(RequestRow::from).collect()
}

#[derive(Template)]
#[template(path = "requests.html")]
pub struct RequestsPage {
    pub page: Page,
    pub csrf: String,
    pub requests: Vec<RequestRow>,
}

pub async fn list(State(app): State<AppState>, visitor: Visitor) -> Result<Response, PageError> {
    let session = app.admin_session(&visitor).await?;
    let nav = Nav::of(&session);
    match app.admin(&visitor, &session, false, AdminRequest::RequestList { all: false }).await? {
        AdminResponse::Requests { requests, .. } => Ok(render(&RequestsPage {
            page: Page::new("Emergency requests", nav),
            csrf: session.csrf,
            requests: pending(requests),
        })),
        _ => Err(unexpected(&nav)),
    }
}

#[derive(Serialize)]
pub struct Live {
    requests: Vec<RequestRow>,
}

#[derive(Serialize)]
pub struct LiveError {
    error: &'static str,
}

/// The waiting requests as JSON for the page's script: one otpd call, no
/// page around it. Errors are JSON too, with the status saying which.
pub async fn live(State(app): State<AppState>, visitor: Visitor) -> Response {
    let refuse = |status: StatusCode, error: &'static str| (status, Json(LiveError { error })).into_response();
    let Some(session) = visitor.session.clone() else {
        return refuse(StatusCode::UNAUTHORIZED, super::login::SESSION_ENDED);
    };
    let request = WebRequest::Admin {
        client: visitor.client.clone(),
        session,
        csrf: None,
        request: AdminRequest::RequestList { all: false },
        // The page polls on its own: the person is not active.
        passive: true,
    };
    match app.call(&request).await {
        Ok(WebResponse::Admin { response: AdminResponse::Requests { requests, .. } }) => {
            Json(Live { requests: pending(requests) }).into_response()
        }
        Err(PageError { failure: Failure::SessionEnded | Failure::NoSession, .. }) => {
            refuse(StatusCode::UNAUTHORIZED, super::login::SESSION_ENDED)
        }
        Ok(WebResponse::Admin { response: AdminResponse::Error { .. } })
        | Err(PageError { failure: Failure::Forbidden, .. }) => {
            refuse(StatusCode::FORBIDDEN, "Only administrators can use this page.")
        }
        _ => refuse(StatusCode::SERVICE_UNAVAILABLE, "The list could not be refreshed."),
    }
}

pub async fn decide(
    State(app): State<AppState>,
    visitor: Visitor,
    Path((id, decision)): Path<(i64, String)>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, PageError> {
    let session = app.form_session(&visitor, &f.csrf).await?;
    let nav = Nav::of(&session);
    let (title, request) = match decision.as_str() {
        "approve" => ("Request approved", AdminRequest::RequestApprove { id }),
        "deny" => ("Request denied", AdminRequest::RequestDeny { id }),
        _ => return Err(PageError::invalid("Approve or deny; nothing else.").with_nav(&nav)),
    };
    let response = app.admin(&visitor, &session, true, request).await?;
    Ok(render(&outcome_page(nav, title, response, ("/requests", "Back to the requests"))))
}
