//! An agent keeps its own certificate fresh: when two thirds of its life
//! have passed it makes a new key pair (the private key never leaves this
//! host), sends a certificate signing request over its own authenticated
//! link ([`common::proto::Renew`]), writes the bundle it gets back
//! atomically over the old one and makes its new links with it.
//!
//! Looked at when the agent starts and every `[fleet] renew_check` (plus up
//! to a tenth at random); between renewals the agent asks a server whether
//! its certificate is still current ([`common::proto::CaCheck`]) and renews
//! at once when the fleet's CAs changed (a rotation); a failed renewal is tried again after a minute,
//! then two, … up to `renew_check`. A certificate that ran out while the
//! agent was stopped cannot be renewed (the servers refuse it at the
//! handshake): the agent refuses to start and says what to do, and a
//! running agent says it in its log at every check.
use crate::fleet::pki;
use common::proto::RenewReply;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// What renewal needs of the agent (crate::fleet::agent::Agent): its
/// bundle, its clock, a way to ask the servers, and to switch identity.
pub(super) trait Holder: Send + Sync + 'static {
    fn bundle(&self) -> pki::Bundle;
    fn bundle_path(&self) -> &Path;
    fn clock(&self) -> &pki::TlsClock;
    /// Sends a [`common::proto::Renew`] to each server in turn, over a new link.
    fn ask(&self, csr: String) -> Pin<Box<dyn Future<Output = Result<RenewReply, String>> + Send + '_>>;
    fn replace_identity(&self, bundle: pki::Bundle, tls: Arc<rustls::ClientConfig>);
    /// Sends a [`common::proto::CaCheck`] (the CAs this host trusts): why
    /// it should renew now, if it should.
    fn check(self: Arc<Self>, cas: Vec<String>)
        -> Pin<Box<dyn Future<Output = Result<Option<String>, String>> + Send>>;
}

/// The first retry after a failed renewal.
const FIRST_RETRY: Duration = Duration::from_secs(60);

/// Runs until the task is aborted.
pub(super) async fn keep_renewed<A: Holder>(agent: Arc<A>, check: Duration) {
    let mut retry = FIRST_RETRY.min(check);
    loop {
        let wait = match check_once(&agent).await {
            Ok(()) => {
                retry = FIRST_RETRY.min(check);
                with_jitter(check)
            }
            Err(e) => {
                tracing::warn!("{e}; trying again in {}", humantime::format_duration(retry));
                let wait = retry;
                retry = (retry * 2).min(check);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// `d` plus up to a tenth of it, at random.
fn with_jitter(d: Duration) -> Duration {
    use rand::Rng;
    let tenth = d.as_millis() as u64 / 10;
    d + Duration::from_millis(rand::thread_rng().gen_range(0..=tenth))
}

/// What is due now: nothing, a renewal, or saying that the certificate
/// expired (Ok: nothing more to do before the next check).
async fn check_once<A: Holder>(agent: &Arc<A>) -> Result<(), String> {
    let bundle = agent.bundle();
    let now = agent.clock().now();
    let (_, until) = bundle.validity().map_err(|e| e.to_string())?;
    if now > until {
        let e = pki::PkiError::Expired { name: bundle.name.clone(), at: pki::rfc3339(until) };
        tracing::error!("{}: {e}", agent.bundle_path().display());
        return Ok(());
    }
    let due = bundle.renew_at().map_err(|e| e.to_string())?;
    if now < due {
        // Not due yet, unless the fleet's CAs changed (`otpctl ca rotate`,
        // `ca retire`): then at once, so a rotation takes hours, not weeks.
        let cas = bundle.ca_fingerprints().map_err(|e| e.to_string())?;
        match agent.clone().check(cas).await {
            Ok(Some(why)) => tracing::info!("renewing this host's certificate before it is due: {why}"),
            Ok(None) => return Ok(()),
            // An older server does not know the question: asked again at the next check.
            Err(e) => {
                tracing::debug!("asking whether this host's certificate is current failed: {e}");
                return Ok(());
            }
        }
    }
    renew(agent.as_ref(), &bundle).await
}

async fn renew<A: Holder>(agent: &A, old: &pki::Bundle) -> Result<(), String> {
    let (_, old_until) = old.validity().map_err(|e| e.to_string())?;
    let failed = |e: String| {
        format!(
            "renewing this host's certificate failed: {e} (the current one stays in use; it is valid until {})",
            pki::rfc3339(old_until)
        )
    };
    let (key_pem, csr) = pki::new_key_and_csr(&old.name).map_err(|e| failed(e.to_string()))?;
    let (cert_pem, ca_pem) = match agent.ask(csr).await.map_err(failed)? {
        RenewReply::Renewed { cert_pem, ca_pem, .. } => (cert_pem, ca_pem),
        RenewReply::Refused { reason } => return Err(failed(format!("the server refused: {reason}"))),
    };
    // What came back must be a bundle for this host and the key made here.
    let (checked, text) =
        pki::renewed_bundle(old, &key_pem, cert_pem, ca_pem, agent.clock().now()).map_err(|e| failed(e.to_string()))?;
    let tls = pki::client_config_with(&checked, agent.clock()).map_err(|e| failed(e.to_string()))?;
    // The server already records the new certificate; it accepts the old
    // one until the new one is presented (or the old one runs out), so a
    // bundle that cannot be written leaves this host where it was.
    pki::write_atomically(agent.bundle_path(), &text)
        .map_err(|e| failed(format!("the new certificate was issued, but {e}")))?;
    let (_, until) = checked.validity().map_err(|e| e.to_string())?;
    let next = checked.renew_at().unwrap_or(until);
    agent.replace_identity(checked, tls);
    tracing::info!(
        "this host's certificate was renewed with a new key (written to {}): valid until {}, renewed again from {}",
        agent.bundle_path().display(),
        pki::rfc3339(until),
        pki::rfc3339(next)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_adds_at_most_a_tenth() {
        for _ in 0..100 {
            let d = with_jitter(Duration::from_secs(3600));
            assert!(d >= Duration::from_secs(3600) && d <= Duration::from_secs(3960), "{d:?}");
        }
    }
}
