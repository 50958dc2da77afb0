//! The outbox sender. Logins only ever write to the outbox (in the same
//! transaction that creates the code); this task delivers, with retries
//! and backoff, so a slow or dead mail server never holds up a login and a
//! daemon restart loses nothing.
use crate::core::service::Core;
use crate::store::model::{EmailCode, QueuedMail};
use crate::sys::clock::local_hhmm as hhmm;
use common::config::SmtpConfig;
use lettre::message::{header::ContentType, Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

pub enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(AsyncFileTransport<Tokio1Executor>),
}

pub struct Mailer {
    transport: Transport,
    from: Mailbox,
    host: String,
    timeout: Duration,
}

impl Mailer {
    /// Builds the transport from `[smtp]`. TLS certificates are always
    /// verified; `ca_file` adds a CA, it never turns verification off.
    pub fn from_config(cfg: &SmtpConfig, host: &str) -> Result<Mailer, String> {
        let from: Mailbox = cfg.from.parse().map_err(|e| format!("smtp.from {:?}: {e}", cfg.from))?;
        let transport = if let Some(dir) = cfg.url.strip_prefix("file:") {
            std::fs::create_dir_all(dir).map_err(|e| format!("smtp.url {dir}: {e}"))?;
            Transport::File(AsyncFileTransport::<Tokio1Executor>::new(dir))
        } else {
            let (scheme, rest) = cfg.url.split_once("://").ok_or("smtp.url: missing scheme")?;
            let rest = rest.trim_end_matches('/');
            let (server, port) = match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse::<u16>().map_err(|_| format!("smtp.url: bad port {p:?}"))?),
                None => (rest.to_string(), if scheme == "smtps" { 465 } else { 25 }),
            };
            let tls_params = || -> Result<TlsParameters, String> {
                let mut b = TlsParameters::builder(server.clone());
                if let Some(ca) = &cfg.ca_file {
                    let pem = std::fs::read(ca).map_err(|e| format!("smtp.ca_file {}: {e}", ca.display()))?;
                    b = b.add_root_certificate(Certificate::from_pem(&pem).map_err(|e| format!("smtp.ca_file: {e}"))?);
                }
                b.build_rustls().map_err(|e| format!("smtp TLS: {e}"))
            };
            let tls = match scheme {
                "smtp" => Tls::Required(tls_params()?),
                "smtps" => Tls::Wrapper(tls_params()?),
                "smtp+plain" => Tls::None,
                other => return Err(format!("smtp.url: unknown scheme {other:?}")),
            };
            let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server.clone())
                .port(port)
                .tls(tls)
                .timeout(Some(cfg.timeout));
            if let Some(path) = &cfg.credentials_file {
                let meta =
                    std::fs::metadata(path).map_err(|e| format!("smtp.credentials_file {}: {e}", path.display()))?;
                if meta.mode() & 0o077 != 0 {
                    return Err(format!(
                        "smtp.credentials_file {} is readable by others; run chmod 600",
                        path.display()
                    ));
                }
                let text = std::fs::read_to_string(path).map_err(|e| format!("smtp.credentials_file: {e}"))?;
                let (user, pass) = text
                    .trim_end_matches('\n')
                    .split_once(':')
                    .ok_or("smtp.credentials_file: expected user:password")?;
                builder = builder.credentials(Credentials::new(user.into(), pass.into()));
            }
            Transport::Smtp(builder.build())
        };
        Ok(Mailer { transport, from, host: host.to_string(), timeout: cfg.timeout })
    }

    /// The message for `code`. `here`: this daemon's machine id: a code
    /// bound to another machine (an agent's host, on a fleet server) names
    /// that host, where it works (check 39), not the server that mails it.
    pub fn render(&self, to: &str, code: &EmailCode, plain: &str, here: &str) -> Result<Message, String> {
        let to: Mailbox = to.parse().map_err(|e| format!("bad recipient: {e}"))?;
        let kind = if code.emergency { "emergency login code" } else { "login code" };
        let host = if code.machine == here { self.host.as_str() } else { code.machine.as_str() };
        let body = format!(
            "Hello {user},\n\n\
             Your {kind} for {user} on {host} is:\n\n    {plain}\n\n\
             It works once, only for {user} on {host}, and expires at {expires}.\n\
             Requested by: {origin}.\n\n\
             If you did not just try to log in, someone may know your password:\n\
             do not share this code, and tell your administrator.\n",
            user = code.user,
            expires = hhmm(code.expires_at),
            origin = code.origin,
        );
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(format!("Your {kind} for {host}"))
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| e.to_string())
    }

    async fn send(&self, msg: Message) -> Result<(), String> {
        let fut = async {
            match &self.transport {
                Transport::Smtp(t) => t.send(msg).await.map(|_| ()).map_err(|e| e.to_string()),
                Transport::File(t) => t.send(msg).await.map(|_| ()).map_err(|e| e.to_string()),
            }
        };
        tokio::time::timeout(self.timeout + Duration::from_secs(5), fut).await.map_err(|_| "timed out".to_string())?
    }
}

/// Retry delay after `attempts` failures: 1 s doubling to at most 60 s.
pub fn backoff(attempts: u32) -> i64 {
    1i64 << attempts.min(6)
}

/// Messages in flight at once (over the transport's connection pool).
const PARALLEL: usize = 16;

pub async fn run(sh: Arc<Core>, mailer: Mailer) {
    let mailer = Arc::new(mailer);
    loop {
        let now = sh.clock.now();
        let due = sh
            .db
            .run(move |st| {
                let due = st.due_mail(now, 64)?;
                if !due.is_empty() {
                    // Debug builds: a test may stop the daemon here,
                    // holding the claimed rows' locks.
                    crate::store::db::test_stop("OTPD_TEST_STOP_IN_CLAIM_FILE");
                }
                Ok(due)
            })
            .await;
        match due {
            Ok(batch) if !batch.is_empty() => {
                let mut tasks = tokio::task::JoinSet::new();
                for m in batch {
                    while tasks.len() >= PARALLEL {
                        let _ = tasks.join_next().await;
                    }
                    let (sh, mailer) = (sh.clone(), mailer.clone());
                    tasks.spawn(async move { deliver(&sh, &mailer, m).await });
                }
                while tasks.join_next().await.is_some() {}
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::error!("reading the outbox failed: {e}"),
        }
        tokio::select! {
            _ = sh.mail_wakeup.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn deliver(sh: &Core, mailer: &Mailer, m: QueuedMail) {
    let now = sh.clock.now();
    let plain = m
        .code
        .code_enc
        .as_deref()
        .filter(|_| m.code.used_at.is_none() && m.code.expires_at > now)
        .and_then(|enc| sh.policy.crypto.open(&crate::core::email::code_aad(&m.code.user), enc))
        .and_then(|b| String::from_utf8(b).ok());
    let id = m.id;
    let Some(plain) = plain else {
        // The code was used, expired or replaced meanwhile: nothing worth sending.
        let _ = sh.db.run(move |st| st.mail_sent(id, now)).await;
        return;
    };
    let result = match mailer.render(&m.to_addr, &m.code, &plain, &sh.policy.machine) {
        Ok(msg) => mailer.send(msg).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            tracing::info!("mail #{id} for {} delivered to {}", m.code.user, crate::core::email::mask(&m.to_addr));
            let _ = sh.db.run(move |st| st.mail_sent(id, now)).await;
        }
        Err(e) => {
            let next = now + backoff(m.attempts);
            tracing::warn!("mail #{id} for {} not delivered (attempt {}): {e}", m.code.user, m.attempts + 1);
            let _ = sh.db.run(move |st| st.mail_failed(id, next, &e)).await;
        }
    }
}
