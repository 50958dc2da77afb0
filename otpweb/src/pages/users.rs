//! `/users`: the list (a page at a time), one user's state and recent
//! failures, and the admin actions on a user.
use super::audit::AuditRow;
use super::view::{outcome_page, query, segment, truth, when_or, yes_no, Page};
use super::{render, unexpected, AppState, Nav, PageError, Visitor};
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Form;
use common::proto::{AdminRequest, AdminResponse, Method, UserInfo};
use serde::Deserialize;

/// Users per page.
pub const PAGE_SIZE: u32 = 50;

pub struct UserRow {
    pub name: String,
    pub path: String,
    pub method: String,
    pub enabled: &'static str,
    pub activated: &'static str,
    pub locked: &'static str,
    pub failures: u32,
    pub email: String,
    pub last_login: String,
    pub recovery_codes_left: Option<u64>,
}

impl From<UserInfo> for UserRow {
    fn from(u: UserInfo) -> UserRow {
        UserRow {
            path: segment(&u.name),
            name: u.name,
            method: u.method.to_string(),
            enabled: yes_no(u.enabled),
            activated: truth(u.activated),
            locked: yes_no(u.locked),
            failures: u.failures_since_login,
            email: u.email.unwrap_or_default(),
            last_login: when_or(u.last_login, "never"),
            recovery_codes_left: u.recovery_codes_left,
        }
    }
}

#[derive(Template)]
#[template(path = "users.html")]
pub struct UsersPage {
    pub page: Page,
    pub csrf: String,
    pub q: String,
    pub users: Vec<UserRow>,
    pub next: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ListQuery {
    q: String,
    after: String,
}

pub async fn list(
    State(app): State<AppState>,
    visitor: Visitor,
    Query(q): Query<ListQuery>,
) -> Result<Response, PageError> {
    let session = app.admin_session(&visitor).await?;
    let nav = Nav::of(&session);
    let search = q.q.trim().to_string();
    let request = AdminRequest::UserList {
        search: (!search.is_empty()).then(|| search.clone()),
        after: (!q.after.is_empty()).then(|| q.after.clone()),
        limit: Some(PAGE_SIZE),
    };
    let AdminResponse::Users { users } = app.admin(&visitor, &session, false, request).await? else {
        return Err(unexpected(&nav));
    };
    let next = match users.last() {
        Some(last) if users.len() >= PAGE_SIZE as usize => {
            Some(format!("/users{}", query(&[("q", &search), ("after", &last.name)])))
        }
        _ => None,
    };
    Ok(render(&UsersPage {
        page: Page::new("Users", nav),
        csrf: session.csrf,
        q: search,
        users: users.into_iter().map(UserRow::from).collect(),
        next,
    }))
}

#[derive(Template)]
#[template(path = "user.html")]
pub struct UserPage {
    pub page: Page,
    pub csrf: String,
    pub user: UserRow,
    pub enabled: bool,
    pub is_email: bool,
    pub audit_href: String,
    pub failures: Vec<AuditRow>,
}

pub async fn show(
    State(app): State<AppState>,
    visitor: Visitor,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    let session = app.admin_session(&visitor).await?;
    let nav = Nav::of(&session);
    let AdminResponse::User { user } =
        app.admin(&visitor, &session, false, AdminRequest::UserShow { user: name.clone() }).await?
    else {
        return Err(unexpected(&nav));
    };
    let request = AdminRequest::Audit {
        user: Some(name.clone()),
        host: None,
        since: None,
        limit: Some(20),
        result: None,
        until: None,
        before_id: None,
    };
    let AdminResponse::Audit { entries } = app.admin(&visitor, &session, false, request).await? else {
        return Err(unexpected(&nav));
    };
    let since = user.last_login.unwrap_or(i64::MIN);
    let failures = entries.into_iter().filter(|e| e.time > since).map(AuditRow::from).filter(|r| r.failure).collect();
    Ok(render(&UserPage {
        page: Page::new(format!("User {}", user.name), nav),
        csrf: session.csrf,
        enabled: user.enabled,
        is_email: user.method == Method::Email,
        audit_href: format!("/audit{}", query(&[("user", &user.name)])),
        user: UserRow::from(user),
        failures,
    }))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ActionForm {
    csrf: String,
    /// `enable` (and the form on the list): the user, the method and address.
    user: String,
    method: String,
    email: String,
}

impl ActionForm {
    fn enable(&self, user: String) -> Result<AdminRequest, PageError> {
        let method = match self.method.as_str() {
            "totp" => Method::Totp,
            "email" => Method::Email,
            _ => return Err(PageError::invalid("Choose TOTP (an authenticator app) or emailed codes.")),
        };
        let email = self.email.trim();
        Ok(AdminRequest::UserEnable { user, method, email: (!email.is_empty()).then(|| email.to_string()) })
    }
}

/// The form on the list: enable a user who may have no record yet.
pub async fn enable_new(
    State(app): State<AppState>,
    visitor: Visitor,
    Form(f): Form<ActionForm>,
) -> Result<Response, PageError> {
    let session = app.form_session(&visitor, &f.csrf).await?;
    let nav = Nav::of(&session);
    let user = f.user.trim().to_string();
    if user.is_empty() {
        return Err(PageError::invalid("Give the user's login name.").with_nav(&nav));
    }
    let request = f.enable(user.clone()).map_err(|e| e.with_nav(&nav))?;
    let response = app.admin(&visitor, &session, true, request).await?;
    let back = format!("/users/{}", segment(&user));
    Ok(render(&outcome_page(nav, "User enabled", response, (&back, "Back to the user"))))
}

pub async fn act(
    State(app): State<AppState>,
    visitor: Visitor,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Result<Response, PageError> {
    let session = app.form_session(&visitor, &f.csrf).await?;
    let nav = Nav::of(&session);
    let user = name.clone();
    let (title, request) = match action.as_str() {
        "enable" => ("User enabled", f.enable(user).map_err(|e| e.with_nav(&nav))?),
        "disable" => ("User disabled", AdminRequest::UserDisable { user }),
        "reset" => ("New key", AdminRequest::UserReset { user }),
        "unlock" => ("User unlocked", AdminRequest::UserUnlock { user }),
        "recovery-codes" => ("New recovery codes", AdminRequest::UserRecoveryCodes { user }),
        _ => return Err(PageError::invalid("There is no such action.").with_nav(&nav)),
    };
    let response = app.admin(&visitor, &session, true, request).await?;
    let back = format!("/users/{}", segment(&name));
    Ok(render(&outcome_page(nav, title, response, (&back, "Back to the user"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostile_user() -> UserInfo {
        UserInfo {
            name: "<img src=x onerror=alert(1)>".into(),
            method: Method::Email,
            enabled: true,
            email: Some("\"><script>alert(2)</script>@x.org".into()),
            activated: false,
            activated_at: None,
            failures: 0,
            locked_until: None,
            locked: false,
            admin_locked_at: None,
            lock_periods: 0,
            failures_since_login: 3,
            created_at: 0,
            updated_at: 0,
            last_login: None,
            hotp_counter: None,
            recovery_codes_left: Some(7),
            clock_drift: None,
        }
    }

    #[test]
    fn a_hostile_user_name_renders_as_text() {
        let nav = Nav { user: Some("<b>admin</b>".into()), admin: true, csrf: Some("tok\"en".into()) };
        let page = UsersPage {
            page: Page::new("Users", nav.clone()),
            csrf: "tok\"en".into(),
            q: "\"><svg onload=alert(3)>".into(),
            users: vec![UserRow::from(hostile_user())],
            next: Some(format!("/users{}", query(&[("after", "<img src=x onerror=alert(1)>")]))),
        };
        let html = page.render().unwrap_or_default();
        assert!(!html.contains("<img") && !html.contains("<script") && !html.contains("<svg"), "{html}");
        assert!(html.contains("&#60;img src=x onerror=alert(1)&#62;"), "the name is shown, as text");
        assert!(html.contains("href=\"/users/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E\""), "{html}");
        assert!(html.contains("value=\"tok&#34;en\""), "attribute values are escaped too");
        assert!(!html.contains("style=") && !html.contains("<script"), "no inline style or script");

        let user = hostile_user();
        let page = UserPage {
            page: Page::new(format!("User {}", user.name), nav),
            csrf: "t".into(),
            enabled: true,
            is_email: true,
            audit_href: format!("/audit{}", query(&[("user", &user.name)])),
            user: UserRow::from(user),
            failures: vec![],
        };
        let html = page.render().unwrap_or_default();
        assert!(!html.contains("<img") && !html.contains("<script"), "{html}");
        assert!(html.contains("<h1>User &#60;img src=x onerror=alert(1)&#62;</h1>"), "{html}");
    }
}
