//! `/sessions`: logins opened through PAM, live and recent.
use super::view::{when, when_or, Page};
use super::{render, unexpected, AppState, Nav, PageError, Visitor};
use askama::Template;
use axum::extract::State;
use axum::response::Response;
use common::proto::{AdminRequest, AdminResponse, SessionInfo};

pub struct SessionRow {
    /// `user (email)`, or the user alone.
    pub who: String,
    pub machine: String,
    pub service: String,
    pub rhost: String,
    pub tty: String,
    pub opened: String,
    pub closed: String,
    pub open: bool,
}

impl From<SessionInfo> for SessionRow {
    fn from(s: SessionInfo) -> SessionRow {
        SessionRow {
            who: match s.email {
                Some(e) => format!("{} ({e})", s.user),
                None => s.user,
            },
            machine: s.machine,
            service: s.service,
            rhost: s.rhost.unwrap_or_default(),
            tty: s.tty.unwrap_or_default(),
            opened: when(s.opened_at),
            open: s.closed_at.is_none(),
            closed: when_or(s.closed_at, "open"),
        }
    }
}

#[derive(Template)]
#[template(path = "sessions.html")]
pub struct SessionsPage {
    pub page: Page,
    pub sessions: Vec<SessionRow>,
}

pub async fn list(State(app): State<AppState>, visitor: Visitor) -> Result<Response, PageError> {
    let session = app.admin_session(&visitor).await?;
    let nav = Nav::of(&session);
    match app.admin(&visitor, &session, false, AdminRequest::Sessions { limit: Some(200) }).await? {
        AdminResponse::Sessions { sessions } => Ok(render(&SessionsPage {
            page: Page::new("Sessions", nav),
            sessions: sessions.into_iter().map(SessionRow::from).collect(),
        })),
        _ => Err(unexpected(&nav)),
    }
}
