//! `org.otpd.Admin1` at `/org/otpd/Admin1` on the system bus: the admin
//! operations of otpctl, answered as JSON (the same `AdminResponse` the admin
//! socket returns), and signals for activation, code requests, emergency
//! requests and lockouts. The caller's uid comes from the bus daemon; only
//! root and the admin group may call (`AccessDenied` otherwise), whatever the
//! bus policy file says.
use crate::core::events::Event;
use crate::core::service::Core;
use common::proto::{AdminErrorKind, AdminRequest, AdminResponse, Method};
use std::sync::Arc;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{fdo, interface, Connection};

pub const BUS_NAME: &str = "org.otpd";
pub const PATH: &str = "/org/otpd/Admin1";

pub struct Admin1 {
    shared: Arc<Core>,
}

async fn caller(conn: &Connection, hdr: &Header<'_>) -> fdo::Result<(u32, Option<u32>, Option<i32>)> {
    let sender = hdr.sender().ok_or_else(|| fdo::Error::AccessDenied("no sender".into()))?.to_owned();
    let proxy = fdo::DBusProxy::new(conn).await.map_err(|e| fdo::Error::Failed(e.to_string()))?;
    let uid = proxy.get_connection_unix_user(sender.clone().into()).await?;
    let pid = proxy.get_connection_unix_process_id(sender.into()).await.ok().map(|p| p as i32);
    let gid = pid.and_then(|p| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("Gid:"))
            .and_then(|g| g.split_whitespace().next()?.parse().ok())
    });
    Ok((uid, gid, pid))
}

impl Admin1 {
    async fn call(&self, conn: &Connection, hdr: &Header<'_>, req: AdminRequest) -> fdo::Result<String> {
        let (uid, gid, pid) = caller(conn, hdr).await?;
        if !crate::core::access::authorized(uid, gid.unwrap_or(u32::MAX), pid, self.shared.admin_gid) {
            tracing::warn!("D-Bus admin call from uid {uid} refused");
            return Err(fdo::Error::AccessDenied("only root and the otpd admin group may administer otpd".into()));
        }
        match crate::admin::ops::dispatch::handle(req, &crate::admin::ops::shared::By::Uid(uid), &self.shared).await {
            AdminResponse::Error { kind, message } => Err(match kind {
                AdminErrorKind::PermissionDenied => fdo::Error::AccessDenied(message),
                AdminErrorKind::InvalidInput => fdo::Error::InvalidArgs(message),
                AdminErrorKind::NotFound => fdo::Error::FileNotFound(message),
                AdminErrorKind::Internal => fdo::Error::Failed(message),
            }),
            ok => serde_json::to_string(&ok).map_err(|e| fdo::Error::Failed(e.to_string())),
        }
    }
}

fn opt(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

#[interface(name = "org.otpd.Admin1")]
impl Admin1 {
    /// method: "totp" or "email"; email may be empty.
    async fn user_enable(
        &self,
        #[zbus(connection)] c: &Connection,
        #[zbus(header)] h: Header<'_>,
        user: String,
        method: String,
        email: String,
    ) -> fdo::Result<String> {
        let method = match method.as_str() {
            "totp" => Method::Totp,
            "email" => Method::Email,
            other => return Err(fdo::Error::InvalidArgs(format!("unknown method {other:?}"))),
        };
        self.call(c, &h, AdminRequest::UserEnable { user, method, email: opt(email) }).await
    }
    async fn user_disable(
        &self,
        #[zbus(connection)] c: &Connection,
        #[zbus(header)] h: Header<'_>,
        user: String,
    ) -> fdo::Result<String> {
        self.call(c, &h, AdminRequest::UserDisable { user }).await
    }
    async fn user_reset(
        &self,
        #[zbus(connection)] c: &Connection,
        #[zbus(header)] h: Header<'_>,
        user: String,
    ) -> fdo::Result<String> {
        self.call(c, &h, AdminRequest::UserReset { user }).await
    }
    async fn user_show(
        &self,
        #[zbus(connection)] c: &Connection,
        #[zbus(header)] h: Header<'_>,
        user: String,
    ) -> fdo::Result<String> {
        self.call(c, &h, AdminRequest::UserShow { user }).await
    }
    async fn user_list(
        &self,
        #[zbus(connection)] c: &Connection,
        #[zbus(header)] h: Header<'_>,
    ) -> fdo::Result<String> {
        self.call(c, &h, AdminRequest::UserList { search: None, after: None, limit: None }).await
    }
    async fn user_unlock(
        &self,
        #[zbus(connection)] c: &Connection,
        #[zbus(header)] h: Header<'_>,
        user: String,
    ) -> fdo::Result<String> {
        self.call(c, &h, AdminRequest::UserUnlock { user }).await
    }
    /// since: unix seconds, 0 for all; limit 0 for the default.
    async fn audit(
        &self,
        #[zbus(connection)] c: &Connection,
        #[zbus(header)] h: Header<'_>,
        user: String,
        since: i64,
        limit: u32,
    ) -> fdo::Result<String> {
        let req = AdminRequest::Audit {
            user: opt(user),
            host: None,
            since: (since > 0).then_some(since),
            limit: (limit > 0).then_some(limit),
            result: None,
            until: None,
            before_id: None,
        };
        self.call(c, &h, req).await
    }
    async fn sessions(
        &self,
        #[zbus(connection)] c: &Connection,
        #[zbus(header)] h: Header<'_>,
        limit: u32,
    ) -> fdo::Result<String> {
        self.call(c, &h, AdminRequest::Sessions { limit: (limit > 0).then_some(limit) }).await
    }
    async fn request_list(
        &self,
        #[zbus(connection)] c: &Connection,
        #[zbus(header)] h: Header<'_>,
        all: bool,
    ) -> fdo::Result<String> {
        self.call(c, &h, AdminRequest::RequestList { all }).await
    }
    async fn request_approve(
        &self,
        #[zbus(connection)] c: &Connection,
        #[zbus(header)] h: Header<'_>,
        id: i64,
    ) -> fdo::Result<String> {
        self.call(c, &h, AdminRequest::RequestApprove { id }).await
    }
    async fn request_deny(
        &self,
        #[zbus(connection)] c: &Connection,
        #[zbus(header)] h: Header<'_>,
        id: i64,
    ) -> fdo::Result<String> {
        self.call(c, &h, AdminRequest::RequestDeny { id }).await
    }
    async fn status(&self, #[zbus(connection)] c: &Connection, #[zbus(header)] h: Header<'_>) -> fdo::Result<String> {
        self.call(c, &h, AdminRequest::Status).await
    }

    #[zbus(signal)]
    async fn enrollment_activated(e: &SignalEmitter<'_>, user: &str) -> zbus::Result<()>;
    /// `address` is masked (b***b@example.org).
    #[zbus(signal)]
    async fn code_requested(e: &SignalEmitter<'_>, user: &str, address: &str) -> zbus::Result<()>;
    #[zbus(signal)]
    async fn emergency_request_pending(e: &SignalEmitter<'_>, id: i64, user: &str) -> zbus::Result<()>;
    #[zbus(signal)]
    async fn user_locked_out(e: &SignalEmitter<'_>, user: &str, until: i64) -> zbus::Result<()>;
}

/// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` is honoured), takes
/// the name, serves the interface and turns events into signals. Without a
/// system bus the daemon carries on: D-Bus is an admin convenience, never
/// in the login path.
pub async fn run(shared: Arc<Core>) {
    let mut events = shared.events.subscribe();
    let conn = async {
        zbus::connection::Builder::system()?
            .name(BUS_NAME)?
            .serve_at(PATH, Admin1 { shared: shared.clone() })?
            .build()
            .await
    }
    .await;
    let conn = match conn {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("D-Bus interface not available: {e}");
            return;
        }
    };
    tracing::info!("D-Bus interface {BUS_NAME} at {PATH}");
    let Ok(iface) = conn.object_server().interface::<_, Admin1>(PATH).await else { return };
    loop {
        let ev = match events.recv().await {
            Ok(ev) => ev,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("{n} D-Bus signals dropped");
                continue;
            }
            Err(_) => return,
        };
        let e = iface.signal_emitter();
        let r = match &ev {
            Event::EnrollmentActivated { user } => Admin1::enrollment_activated(e, user).await,
            Event::CodeRequested { user, address } => Admin1::code_requested(e, user, address).await,
            Event::EmergencyRequestPending { id, user } => Admin1::emergency_request_pending(e, *id, user).await,
            Event::UserLockedOut { user, until } => Admin1::user_locked_out(e, user, *until).await,
            Event::SecondFactorChanged { .. } => Ok(()),
        };
        if let Err(err) = r {
            tracing::warn!("D-Bus signal {ev:?} not sent: {err}");
        }
    }
}
