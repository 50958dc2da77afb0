//! A console login's second factor: the very conversation a terminal login
//! has ([`crate::login::conversation`]: the same plan, decisions, lockout,
//! emailed and emergency codes, audit), carried to the browser one HTTP
//! round at a time. The conversation runs as a task on a channel pair; a
//! flow is its browser's end, kept between rounds under a random id.
use crate::core::service::Core;
use crate::login::conversation::{run, Peer};
use crate::login::transport::Transport;
use crate::web::sessions::{key_of, new_token};
use common::codec::FrameError;
use common::proto::{ClientMsg, OutcomeKind, QrStyle, ServerMsg, PROTOCOL_VERSION};
use common::web::FlowLine;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The service console conversations and actions are audited under.
pub const SERVICE: &str = "web";

/// Flows waiting for an answer at once; the oldest goes first.
const MAX_FLOWS: usize = 2048;

/// How long one round may wait for the conversation's next prompt or
/// outcome (a recovery code's hash, a busy database).
const ROUND: Duration = Duration::from_secs(30);

/// What a flow is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A console login: an accept issues a session.
    Login,
    /// Re-enrollment, first step: a code from the current authenticator
    /// (or a recovery code) before anything changes.
    Verify,
    /// Re-enrollment, second step: the new key's first good code activates it.
    Activate,
}

/// The browser's end of one conversation.
pub struct Flow {
    pub user: String,
    pub purpose: Purpose,
    /// The browser's address: every round is audited from it.
    pub addr: String,
    started: std::time::Instant,
    to_conversation: mpsc::Sender<ClientMsg>,
    from_conversation: mpsc::Receiver<ServerMsg>,
}

/// Where a round left the flow.
pub enum Turn {
    Prompt { lines: Vec<FlowLine>, prompt: String, echo: bool, enroll_uri: Option<String> },
    Ended { lines: Vec<FlowLine>, outcome: OutcomeKind, message: Option<String> },
}

/// The conversation's end of the channel pair.
struct Channel {
    from_browser: mpsc::Receiver<ClientMsg>,
    to_browser: mpsc::Sender<ServerMsg>,
}

impl Transport for Channel {
    async fn read_msg(&mut self, wait: Duration, _io: Duration) -> Result<ClientMsg, FrameError> {
        match tokio::time::timeout(wait, self.from_browser.recv()).await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(FrameError::Closed),
            Err(_) => Err(FrameError::TimedOut),
        }
    }

    fn write_msg(&mut self, msg: &ServerMsg, _io: Duration) -> impl Future<Output = Result<(), FrameError>> + Send {
        let msg = msg.clone();
        async move { self.to_browser.send(msg).await.map_err(|_| FrameError::Closed) }
    }
}

impl Flow {
    /// Starts the conversation of `user` (its account's uid looked up
    /// here: this door runs as root) from the browser at `addr`.
    pub fn start(core: Arc<Core>, user: &str, addr: &str, purpose: Purpose) -> Flow {
        let (to_conversation, from_browser) = mpsc::channel(4);
        let (to_browser, from_conversation) = mpsc::channel(16);
        let begin = ClientMsg::Begin {
            protocol: PROTOCOL_VERSION,
            user: user.to_string(),
            service: SERVICE.to_string(),
            rhost: Some(addr.to_string()),
            ruser: None,
            tty: None,
            pid: 0,
            uid: crate::core::access::account_uid(user),
            qr: QrStyle::Off,
        };
        tokio::spawn(async move {
            let peer = Peer::local(&core, 0, None);
            run(Channel { from_browser, to_browser }, &peer, begin, &core, None).await;
        });
        Flow {
            user: user.to_string(),
            purpose,
            addr: addr.to_string(),
            started: std::time::Instant::now(),
            to_conversation,
            from_conversation,
        }
    }

    /// Sends the browser's answer and reads on to the next prompt or the end.
    pub async fn answer(&mut self, text: String) -> Turn {
        if self.to_conversation.send(ClientMsg::Answer { text }).await.is_err() {
            return ended_without_outcome();
        }
        self.next().await
    }

    /// Ends the conversation as a terminal's ^D would (audited as cancelled).
    pub async fn cancel(self) {
        let _ = self.to_conversation.send(ClientMsg::Cancel).await;
    }

    /// Reads the conversation's messages up to its next prompt or its outcome.
    pub async fn next(&mut self) -> Turn {
        let mut lines = Vec::new();
        let mut enroll_uri = None;
        loop {
            let msg = match tokio::time::timeout(ROUND, self.from_conversation.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => return ended_without_outcome(),
                Err(_) => {
                    let message = Some("The passcode service did not answer in time; try again.".into());
                    return Turn::Ended { lines, outcome: OutcomeKind::Deny, message };
                }
            };
            match msg {
                ServerMsg::Prompt { text, echo } => return Turn::Prompt { lines, prompt: text, echo, enroll_uri },
                ServerMsg::Info { text } => {
                    let (shown, uri) = split_uri(&text);
                    enroll_uri = enroll_uri.or(uri);
                    lines.push(FlowLine { error: false, text: shown });
                }
                ServerMsg::Error { text } => lines.push(FlowLine { error: true, text }),
                ServerMsg::ResolveUser => {
                    let uid = crate::core::access::account_uid(&self.user);
                    if self.to_conversation.send(ClientMsg::UserResolved { uid }).await.is_err() {
                        return ended_without_outcome();
                    }
                }
                ServerMsg::Outcome { result, message } => return Turn::Ended { lines, outcome: result, message },
                ServerMsg::Ack => {}
            }
        }
    }
}

fn ended_without_outcome() -> Turn {
    let message = Some("This login has ended; start again.".into());
    Turn::Ended { lines: Vec::new(), outcome: OutcomeKind::Deny, message }
}

/// An enrollment text without its `URI: otpauth://…` line, and that URI
/// (the browser draws it as a QR code).
fn split_uri(text: &str) -> (String, Option<String>) {
    let mut uri = None;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| match l.strip_prefix("URI: ").filter(|u| u.starts_with("otpauth://")) {
            Some(u) => {
                uri = Some(u.to_string());
                false
            }
            None => true,
        })
        .collect();
    (kept.join("\n"), uri)
}

/// Flows between rounds, by the hash of their id.
pub struct Flows {
    waiting: Mutex<HashMap<[u8; 32], Flow>>,
    /// A flow unanswered this long has ended (its conversation's prompt timed out).
    max_age: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Flows {
    pub fn new(max_age: Duration) -> Flows {
        Flows { waiting: Mutex::new(HashMap::new()), max_age }
    }

    /// Keeps `flow` until its next answer; its new id.
    pub fn keep(&self, flow: Flow) -> String {
        let (id, key) = new_token();
        let mut waiting = lock(&self.waiting);
        waiting.retain(|_, f| f.started.elapsed() < self.max_age);
        if waiting.len() >= MAX_FLOWS {
            if let Some(k) = waiting.iter().min_by_key(|(_, f)| f.started).map(|(k, _)| *k) {
                waiting.remove(&k);
            }
        }
        waiting.insert(key, flow);
        id
    }

    /// The flow of `id`, taken out (one round at a time; a second answer
    /// sent meanwhile finds nothing).
    pub fn take(&self, id: &str) -> Option<Flow> {
        let flow = lock(&self.waiting).remove(&key_of(id))?;
        (flow.started.elapsed() < self.max_age).then_some(flow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uri_line_is_taken_out_of_the_enrollment_text() {
        let text = "Two-factor authentication is required for this account.\n\
                    Enter this secret key in your authenticator app: ABCD\n\
                    URI: otpauth://totp/x:ada?secret=ABCD\n\
                    Then enter the code the app shows to finish enrollment.";
        let (shown, uri) = split_uri(text);
        assert_eq!(uri.as_deref(), Some("otpauth://totp/x:ada?secret=ABCD"));
        assert!(!shown.contains("otpauth://") && shown.contains("secret key in your authenticator app: ABCD"));
        assert_eq!(split_uri("URI: http://elsewhere"), ("URI: http://elsewhere".into(), None));
    }
}
