//! Door: the admin socket. One request, one response, root or the admin
//! group only; the request is handled by [`crate::admin::ops::dispatch`].
use crate::admin::ops::dispatch::handle;
use crate::admin::ops::shared::{err, By};
use crate::core::service::Core;
use crate::sys::conn::{Conn, Listener};
use common::proto::{AdminErrorKind, AdminRequest, AdminResponse};
use std::sync::Arc;

pub async fn serve_admin(listener: Listener, core: Arc<Core>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Ok(stream) = listener.accept().await else { continue };
        let core = core.clone();
        tokio::spawn(async move {
            connection(stream, &core).await;
            drop(permit);
        });
    }
}

pub async fn connection(mut s: Conn, sh: &Core) {
    let Ok((uid, gid, pid)) = s.peer() else { return };
    if !crate::core::access::authorized(uid, gid, pid, sh.admin_gid) {
        tracing::warn!("admin request from uid {uid} refused: not root or in the admin group");
        let resp = AdminResponse::Error {
            kind: AdminErrorKind::PermissionDenied,
            message: "permission denied: run otpctl as root or as a member of the otpd admin group".into(),
        };
        let _ = s.write_msg(&resp, sh.io_timeout).await;
        return;
    }
    // An authorized admin may send large requests (an import is one request).
    let limit = common::codec::MAX_ADMIN_RESPONSE;
    let req: AdminRequest =
        match s.read_msg_limited(sh.io_timeout, sh.io_timeout.max(std::time::Duration::from_secs(30)), limit).await {
            Ok(r) => r,
            Err(e) => {
                let resp =
                    AdminResponse::Error { kind: AdminErrorKind::InvalidInput, message: format!("bad request: {e}") };
                let _ = s.write_msg(&resp, sh.io_timeout).await;
                return;
            }
        };
    let resp = handle(req, &By::Uid(uid), sh).await;
    // The admin client may be slow to read a large answer.
    let timeout = sh.io_timeout.max(std::time::Duration::from_secs(30));
    if let Err(common::codec::FrameError::TooBig(n)) = s.write_admin_response(&resp, timeout).await {
        let resp = err(
            AdminErrorKind::InvalidInput,
            format!("the answer ({n} bytes) is too large to send; ask for less (--limit, --since, --user)"),
        );
        let _ = s.write_msg(&resp, sh.io_timeout).await;
    }
}
