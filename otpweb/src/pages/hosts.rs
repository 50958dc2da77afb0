//! `/hosts`: fleet hosts; adding one hands out its bundle once, as a download.
use super::login::CsrfForm;
use super::view::{outcome_page, segment, when, when_or, Page};
use super::{render, unexpected, AppState, Nav, PageError, Visitor};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Form;
use common::proto::{AdminRequest, AdminResponse, HostInfo};
use serde::Deserialize;

pub struct HostRow {
    pub name: String,
    /// The name as a URL path segment.
    pub path: String,
    pub role: String,
    pub fingerprint: String,
    pub added: String,
    pub last_seen: String,
    pub last_addr: String,
    pub revoked: String,
    /// When its certificate runs out, or that it did (a new bundle is needed).
    pub expires: String,
    pub renewed: String,
    pub active: bool,
}

impl From<HostInfo> for HostRow {
    fn from(h: HostInfo) -> HostRow {
        HostRow {
            path: segment(&h.name),
            name: h.name,
            role: h.role,
            fingerprint: h.fingerprint,
            added: when(h.added_at),
            last_seen: when_or(h.last_seen, "never"),
            last_addr: h.last_addr.unwrap_or_default(),
            revoked: when_or(h.revoked_at, ""),
            expires: match (h.expired, h.expires_at) {
                (true, _) => "expired: needs a new bundle".into(),
                (false, at) => when_or(at, ""),
            },
            renewed: when_or(h.renewed_at, ""),
            active: h.revoked_at.is_none(),
        }
    }
}

#[derive(Template)]
#[template(path = "hosts.html")]
pub struct HostsPage {
    pub page: Page,
    pub csrf: String,
    pub hosts: Vec<HostRow>,
}

pub async fn list(State(app): State<AppState>, visitor: Visitor) -> Result<Response, PageError> {
    let session = app.admin_session(&visitor).await?;
    let nav = Nav::of(&session);
    match app.admin(&visitor, &session, false, AdminRequest::HostList).await? {
        AdminResponse::Hosts { hosts } => Ok(render(&HostsPage {
            page: Page::new("Hosts", nav),
            csrf: session.csrf,
            hosts: hosts.into_iter().map(HostRow::from).collect(),
        })),
        _ => Err(unexpected(&nav)),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct AddForm {
    csrf: String,
    name: String,
    admin: Option<String>,
}

pub async fn add(State(app): State<AppState>, visitor: Visitor, Form(f): Form<AddForm>) -> Result<Response, PageError> {
    let session = app.form_session(&visitor, &f.csrf).await?;
    let nav = Nav::of(&session);
    let name = f.name.trim().to_string();
    if name.is_empty() {
        return Err(PageError::invalid("Give the host's name.").with_nav(&nav));
    }
    let request = AdminRequest::HostAdd { name, admin: f.admin.is_some() };
    match app.admin(&visitor, &session, true, request).await? {
        AdminResponse::HostBundle { name, bundle } => Ok(bundle_download(&name, bundle)),
        _ => Err(unexpected(&nav)),
    }
}

/// The bundle as a file the browser saves; it is not kept anywhere.
pub fn bundle_download(name: &str, bundle: String) -> Response {
    let file: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    let file = if file.trim_matches('.').is_empty() { "host".to_string() } else { file };
    let disposition = format!("attachment; filename=\"{file}.bundle\"");
    (
        [
            (header::CONTENT_TYPE, "application/x-pem-file".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        bundle,
    )
        .into_response()
}

pub async fn revoke(
    State(app): State<AppState>,
    visitor: Visitor,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, PageError> {
    let session = app.form_session(&visitor, &f.csrf).await?;
    let response = app.admin(&visitor, &session, true, AdminRequest::HostRevoke { name }).await?;
    Ok(render(&outcome_page(Nav::of(&session), "Host revoked", response, ("/hosts", "Back to hosts"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_row_says_when_its_certificate_runs_out_or_that_it_did() {
        let info = |expired: bool| HostInfo {
            name: "web01".into(),
            role: "agent".into(),
            fingerprint: "ab".into(),
            added_at: 0,
            revoked_at: None,
            last_seen: None,
            last_addr: None,
            expires_at: Some(86_400),
            expired,
            renewed_at: Some(3600),
            ca: None,
        };
        let live = HostRow::from(info(false));
        assert_eq!((live.expires, live.renewed), (when(86_400), when(3600)));
        assert_eq!(HostRow::from(info(true)).expires, "expired: needs a new bundle");
    }

    #[test]
    fn bundle_is_a_download_that_is_not_cached() {
        let r = bundle_download("web01\"; x=../y", "PEM".into());
        let h = |n: header::HeaderName| r.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert_eq!(h(header::CONTENT_DISPOSITION), "attachment; filename=\"web01___x_.._y.bundle\"");
        assert_eq!(h(header::CONTENT_TYPE), "application/x-pem-file");
        assert_eq!(h(header::CACHE_CONTROL), "no-store");
    }
}
