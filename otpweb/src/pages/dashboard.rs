//! `/`: the administrators' overview (`status`); others go to `/me`.
use super::hosts::HostRow;
use super::view::{when, Page};
use super::{render, unexpected, AppState, Nav, PageError, Visitor};
use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use common::proto::{AdminRequest, AdminResponse, StatusInfo};

pub struct Figure {
    pub label: &'static str,
    pub value: String,
    pub href: Option<&'static str>,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
pub struct DashboardPage {
    pub page: Page,
    pub users: Vec<Figure>,
    pub mail: Vec<Figure>,
    pub mail_error: Option<String>,
    pub daemon: Vec<Figure>,
    pub hosts: Vec<HostRow>,
}

fn figure(label: &'static str, value: impl ToString, href: Option<&'static str>) -> Figure {
    Figure { label, value: value.to_string(), href }
}

impl DashboardPage {
    pub fn new(nav: Nav, s: StatusInfo) -> DashboardPage {
        let users = vec![
            figure("Enrolled (activated)", s.users_activated, Some("/users")),
            figure("Pending enrollment", s.users_enabled.saturating_sub(s.users_activated), Some("/users")),
            figure("Locked", s.users_locked, Some("/users")),
            figure("Emergency requests waiting", s.requests_pending, Some("/requests")),
        ];
        let mail = vec![
            figure("Mail", if s.mail_enabled { "enabled" } else { "disabled" }, None),
            figure("Queued", s.mail_queued, None),
            figure("Failing", s.mail_failing, None),
            figure("Sent in the last hour", s.mail_sent_last_hour, None),
        ];
        let daemon = vec![
            figure("Version", &s.version, None),
            figure("Role", s.role.as_str(), None),
            figure("Running since", when(s.started_at), None),
            figure("Open connections", s.open_connections, None),
            figure("Audit entries", s.audit_entries, Some("/audit")),
        ];
        DashboardPage {
            page: Page::new("Dashboard", nav),
            users,
            mail,
            mail_error: s.mail_last_error,
            daemon,
            hosts: s.hosts.into_iter().map(HostRow::from).collect(),
        }
    }
}

pub async fn show(State(app): State<AppState>, visitor: Visitor) -> Result<Response, PageError> {
    let session = app.whoami(&visitor).await?;
    if !session.admin {
        return Ok(Redirect::to("/me").into_response());
    }
    let nav = Nav::of(&session);
    match app.admin(&visitor, &session, false, AdminRequest::Status).await? {
        AdminResponse::Status { status } => Ok(render(&DashboardPage::new(nav, status))),
        _ => Err(unexpected(&nav)),
    }
}
