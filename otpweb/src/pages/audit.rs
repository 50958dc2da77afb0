//! `/audit`: the audit trail, filtered, a page at a time (older entries by id).
use super::view::{parse_when, query, when, Line, Page};
use super::{render, unexpected, AppState, Nav, PageError, Visitor};
use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::proto::{AdminRequest, AdminResponse, AuditEntry};
use serde::Deserialize;

/// Entries per page.
pub const PAGE_SIZE: u32 = 100;

/// Results that are a failed attempt (as otpd writes them).
const FAILURES: [&str; 4] = ["deny", "locked", "refused", "error"];

pub struct AuditRow {
    pub id: i64,
    pub time: String,
    pub user: String,
    pub service: String,
    pub machine: String,
    pub rhost: String,
    pub tty: String,
    pub method: String,
    pub result: String,
    pub reason: String,
    pub failure: bool,
}

impl From<AuditEntry> for AuditRow {
    fn from(e: AuditEntry) -> AuditRow {
        AuditRow {
            id: e.id,
            time: when(e.time),
            failure: FAILURES.contains(&e.result.as_str()),
            user: e.user,
            service: e.service,
            machine: e.machine,
            rhost: e.rhost.unwrap_or_default(),
            tty: e.tty.unwrap_or_default(),
            method: e.method,
            result: e.result,
            // A refusal an agent spooled while no server answered.
            reason: match e.received_at {
                Some(at) => format!("late, received {}: {}", when(at), e.reason),
                None => e.reason,
            },
        }
    }
}

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
pub struct AuditQuery {
    pub user: String,
    pub host: String,
    pub result: String,
    pub since: String,
    pub until: String,
    pub before: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
pub struct AuditPage {
    pub page: Page,
    pub filter: AuditQuery,
    pub error: Option<Line>,
    pub entries: Vec<AuditRow>,
    pub older: Option<String>,
    pub newest: Option<String>,
}

fn opt(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// The request a filter asks for; bad input is the visitor's to correct.
pub fn audit_request(q: &AuditQuery) -> Result<AdminRequest, String> {
    let before_id = match q.before.trim() {
        "" => None,
        b => Some(b.parse::<i64>().map_err(|_| format!("{b:?} is not an entry number"))?),
    };
    Ok(AdminRequest::Audit {
        user: opt(&q.user),
        host: opt(&q.host),
        since: parse_when(&q.since)?,
        limit: Some(PAGE_SIZE),
        result: opt(&q.result),
        until: parse_when(&q.until)?,
        before_id,
    })
}

pub async fn list(
    State(app): State<AppState>,
    visitor: Visitor,
    Query(q): Query<AuditQuery>,
) -> Result<Response, PageError> {
    let session = app.admin_session(&visitor).await?;
    let nav = Nav::of(&session);
    let mut page = AuditPage {
        page: Page::new("Audit", nav.clone()),
        filter: q.clone(),
        error: None,
        entries: Vec::new(),
        older: None,
        newest: None,
    };
    let request = match audit_request(&q) {
        Ok(r) => r,
        Err(message) => {
            page.error = Some(Line::error(message));
            return Ok((StatusCode::BAD_REQUEST, render(&page)).into_response());
        }
    };
    let AdminResponse::Audit { entries } = app.admin(&visitor, &session, false, request).await? else {
        return Err(unexpected(&nav));
    };
    let filters = |before: &str| {
        format!(
            "/audit{}",
            query(&[
                ("user", q.user.trim()),
                ("host", q.host.trim()),
                ("result", q.result.trim()),
                ("since", q.since.trim()),
                ("until", q.until.trim()),
                ("before", before),
            ])
        )
    };
    if entries.len() >= PAGE_SIZE as usize {
        page.older = entries.last().map(|e| filters(&e.id.to_string()));
    }
    if !q.before.trim().is_empty() {
        page.newest = Some(filters(""));
    }
    page.entries = entries.into_iter().map(AuditRow::from).collect();
    Ok(render(&page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_the_request_and_bad_ones_none() {
        let q = AuditQuery {
            user: " alice ".into(),
            result: "deny".into(),
            since: "2023-11-14".into(),
            before: "42".into(),
            ..AuditQuery::default()
        };
        let r = audit_request(&q);
        assert_eq!(
            r,
            Ok(AdminRequest::Audit {
                user: Some("alice".into()),
                host: None,
                since: Some(1_699_920_000),
                limit: Some(PAGE_SIZE),
                result: Some("deny".into()),
                until: None,
                before_id: Some(42),
            })
        );
        assert!(audit_request(&AuditQuery { before: "x".into(), ..AuditQuery::default() }).is_err());
        assert!(audit_request(&AuditQuery { until: "soon".into(), ..AuditQuery::default() }).is_err());
    }
}
