//! The two Unix sockets: the PAM conversation server and the admin server.
use crate::admin;
use crate::auth::{self, LoginContext, Plan, Policy, Verdict};
use crate::clock::Clock;
use crate::db::Db;
use common::codec::{body_len, decode_body, encode, FrameError};
use common::proto::{ClientMsg, OutcomeKind, ServerMsg, PROTOCOL_VERSION};
use common::text::sanitize_field;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

pub struct Shared {
    pub db: Db,
    pub policy: Arc<Policy>,
    pub clock: Box<dyn Clock>,
    pub io_timeout: Duration,
    pub prompt_timeout: Duration,
    pub admin_gid: Option<u32>,
    pub started_at: i64,
    pub database: String,
    pub open_connections: AtomicU64,
}

/// Reads one frame. `wait` bounds the time until its first byte arrives
/// (a user typing); once a frame has started, the rest must arrive within
/// `io_timeout`, so a half-sent frame cannot hold a connection slot.
pub async fn read_msg<T: DeserializeOwned>(s: &mut UnixStream, wait: Duration, io_timeout: Duration) -> Result<T, FrameError> {
    let mut header = [0u8; 4];
    match tokio::time::timeout(wait, s.read(&mut header[..1])).await {
        Err(_) => return Err(FrameError::TimedOut),
        Ok(Ok(0)) => return Err(FrameError::Closed),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.into()),
    }
    let rest = async {
        s.read_exact(&mut header[1..]).await?;
        let len = body_len(header)?;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await?;
        decode_body(&body)
    };
    tokio::time::timeout(io_timeout, rest).await.map_err(|_| FrameError::TimedOut)?
}

pub async fn write_msg<T: Serialize>(s: &mut UnixStream, msg: &T, io_timeout: Duration) -> Result<(), FrameError> {
    let frame = encode(msg)?;
    tokio::time::timeout(io_timeout, s.write_all(&frame)).await.map_err(|_| FrameError::TimedOut)??;
    Ok(())
}

pub async fn serve_pam(listener: UnixListener, shared: Arc<Shared>, max_connections: usize) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        // Take a slot before accepting: excess clients wait in the kernel backlog.
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept on PAM socket failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.open_connections.fetch_add(1, Ordering::Relaxed);
            pam_connection(stream, &shared).await;
            shared.open_connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

async fn outcome(s: &mut UnixStream, sh: &Shared, result: OutcomeKind, message: Option<String>) {
    let _ = write_msg(s, &ServerMsg::Outcome { result, message }, sh.io_timeout).await;
}

fn until_text(until: i64, now: i64) -> String {
    let minutes = ((until - now).max(0) + 59) / 60;
    format!("Too many failed attempts. Try again in {minutes} minute(s) or ask an administrator to unlock your account.")
}

async fn pam_connection(mut s: UnixStream, sh: &Shared) {
    let peer_uid = match s.peer_cred() {
        Ok(c) => c.uid(),
        Err(e) => {
            tracing::warn!("no peer credentials on PAM connection: {e}");
            return;
        }
    };
    let first: ClientMsg = match read_msg(&mut s, sh.io_timeout, sh.io_timeout).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("PAM connection from uid {peer_uid}: {e}; closed");
            return;
        }
    };
    let (protocol, user, service, rhost, tty) = match first {
        ClientMsg::Begin { protocol, user, service, rhost, tty, .. } => (protocol, user, service, rhost, tty),
        ClientMsg::SessionOpened { .. } | ClientMsg::SessionClosed { .. } => {
            let _ = write_msg(&mut s, &ServerMsg::Ack, sh.io_timeout).await;
            return;
        }
        other => {
            tracing::warn!("PAM connection from uid {peer_uid}: expected begin, got {}", kind(&other));
            outcome(&mut s, sh, OutcomeKind::Deny, Some("Protocol error.".into())).await;
            return;
        }
    };
    let field = |v: Option<String>| v.map(|x| sanitize_field(&x, 128)).filter(|x| !x.is_empty());
    let mut ctx = LoginContext {
        user: sanitize_field(&user, 80),
        service: sanitize_field(&service, 64),
        rhost: field(rhost),
        tty: field(tty),
        peer_uid,
    };
    if ctx.service.is_empty() {
        ctx.service = "-".into();
    }
    let refuse = if protocol != PROTOCOL_VERSION {
        Some(format!("protocol version {protocol} not supported (otpd speaks {PROTOCOL_VERSION})"))
    } else if !auth::valid_user_name(&user) {
        Some("invalid user name".to_string())
    } else {
        None
    };
    if let Some(reason) = refuse {
        let _ = run_audit_result(sh, ctx.clone(), "deny", reason).await;
        outcome(&mut s, sh, OutcomeKind::Deny, Some("Passcode check refused.".into())).await;
        return;
    }

    let plan = {
        let ctx = ctx.clone();
        let now = sh.clock.now();
        let policy = sh.policy.clone();
        sh.db.run(move |st| auth::plan(st, &policy, &ctx, now)).await
    };
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("store error for {}: {e}; denying", ctx.user);
            outcome(&mut s, sh, OutcomeKind::Deny, Some("Passcode check unavailable.".into())).await;
            return;
        }
    };
    match plan {
        Plan::NotEnrolled => return outcome(&mut s, sh, OutcomeKind::NotEnrolled, None).await,
        Plan::Locked { until } => {
            return outcome(&mut s, sh, OutcomeKind::Locked, Some(until_text(until, sh.clock.now()))).await
        }
        Plan::Refused { message } => return outcome(&mut s, sh, OutcomeKind::Deny, Some(message.into())).await,
        Plan::Enroll { uri, secret_b32 } => {
            let qr = crate::qr::render(&uri).unwrap_or_default();
            let text = format!(
                "Two-factor authentication is required for this account.\n\
                 Scan this QR code with your authenticator app:\n{qr}\n\
                 Or enter this secret key manually: {secret_b32}\n\
                 URI: {uri}\n\
                 Then enter the code the app shows to finish enrollment."
            );
            if write_msg(&mut s, &ServerMsg::Info { text }, sh.io_timeout).await.is_err() {
                return;
            }
        }
        Plan::Ask => {}
    }
    let prompt = ServerMsg::Prompt { echo: false, text: "Passcode: ".into() };
    if write_msg(&mut s, &prompt, sh.io_timeout).await.is_err() {
        return;
    }
    let answer = match read_msg::<ClientMsg>(&mut s, sh.prompt_timeout, sh.io_timeout).await {
        Ok(ClientMsg::Answer { text }) => text,
        Ok(ClientMsg::Cancel) => {
            let _ = run_audit_result(sh, ctx.clone(), "deny", "conversation cancelled".into()).await;
            return outcome(&mut s, sh, OutcomeKind::Deny, None).await;
        }
        Ok(other) => {
            let _ = run_audit_result(sh, ctx.clone(), "deny", format!("protocol error: unexpected {}", kind(&other))).await;
            return outcome(&mut s, sh, OutcomeKind::Deny, Some("Protocol error.".into())).await;
        }
        Err(e) => {
            let _ = run_audit_result(sh, ctx.clone(), "deny", format!("no answer: {e}")).await;
            return outcome(&mut s, sh, OutcomeKind::Deny, Some("Passcode not accepted.".into())).await;
        }
    };
    let now = sh.clock.now();
    let verdict = {
        let ctx = ctx.clone();
        let policy = sh.policy.clone();
        sh.db.run(move |st| auth::check_answer(st, &policy, &ctx, &answer, now)).await
    };
    match verdict {
        Ok(Verdict::Accept { activated }) => {
            let msg = activated.then(|| "Passcode accepted: your authenticator is now enrolled.".to_string());
            outcome(&mut s, sh, OutcomeKind::Accept, msg).await
        }
        Ok(Verdict::Deny { message }) => outcome(&mut s, sh, OutcomeKind::Deny, Some(message)).await,
        Ok(Verdict::Locked { until }) => outcome(&mut s, sh, OutcomeKind::Locked, Some(until_text(until, now))).await,
        Err(e) => {
            // Nothing was committed: the code was not consumed, the attempt not recorded; deny.
            tracing::error!("store error while checking a code for {}: {e}; denying", ctx.user);
            outcome(&mut s, sh, OutcomeKind::Deny, Some("Passcode check unavailable.".into())).await
        }
    }
}

async fn run_audit_result(sh: &Shared, ctx: LoginContext, result: &'static str, reason: String) -> Result<(), crate::store::StoreError> {
    let policy = sh.policy.clone();
    let now = sh.clock.now();
    sh.db.run(move |st| auth::audit(st, &policy, &ctx, now, result, &reason)).await
}

fn kind(m: &ClientMsg) -> &'static str {
    match m {
        ClientMsg::Begin { .. } => "begin",
        ClientMsg::Answer { .. } => "answer",
        ClientMsg::Cancel => "cancel",
        ClientMsg::SessionOpened { .. } => "session_opened",
        ClientMsg::SessionClosed { .. } => "session_closed",
    }
}

pub async fn serve_admin(listener: UnixListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(16));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            admin::connection(stream, &shared).await;
            drop(permit);
        });
    }
}
