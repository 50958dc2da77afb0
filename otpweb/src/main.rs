//! otpweb: the OTP web console, an HTTPS door to otpd in its own
//! unprivileged process.
//!
//! Threat model. otpweb holds no authority. It keeps no secret of otpd's,
//! no database and no list of sessions: every page is one request to otpd
//! over `[web] socket` naming the console session (a token otpd issued after
//! the account password and the second factor), and otpd decides it on the
//! person behind that session at that moment. Browser-side, otpweb adds the
//! usual web defences (TLS, `__Host-` cookies that are Secure, HttpOnly and
//! SameSite=Strict, CSRF tokens, an Origin check on every POST, a strict
//! CSP, escaping of every text otpd returns). A compromised otpweb can act
//! only for the console sessions live while it is compromised, within what
//! their users may do, and see the passwords and codes typed into it then;
//! it cannot mint sessions, and it learns no TOTP secret but those of
//! enrollments shown through it. It never logs passwords, codes, tokens or
//! enrollment URIs.
#![warn(clippy::too_many_lines)]
#![cfg_attr(test, allow(clippy::too_many_lines))]

mod assets;
mod config;
mod otpd;
mod pages;
mod qr;
mod security;
mod server;
mod tls;

use clap::Parser;
use std::process::ExitCode;

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Config(#[from] common::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
}

fn main() -> ExitCode {
    let args = config::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("otpweb: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otpweb: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &config::Args) -> Result<(), StartError> {
    let cfg = common::config::Config::load(&args.config)?;
    let settings = config::Settings::new(args, cfg.web);
    let identity = match &settings.certificate {
        Some((cert, key)) => tls::load(cert, key)?,
        None => {
            let names = tls::certificate_names(&settings.listen, settings.origin.as_deref());
            tls::self_signed(&settings.state_dir, &names)?
        }
    };
    if identity.created {
        tracing::info!("made a self-signed certificate in {}", settings.state_dir.display());
    }
    tracing::info!("certificate SHA-256 fingerprint: {}", identity.fingerprint);
    if let Err(e) = tls::publish_fingerprint(&settings.state_dir, &identity.fingerprint) {
        // A configured certificate does not need the state directory.
        tracing::warn!("cannot write the fingerprint file: {e}");
    }
    let tls = tls::server_config(identity)?;

    let mut listeners = Vec::new();
    for addr in &settings.listen {
        let listener = tokio::net::TcpListener::bind(addr.as_str())
            .await
            .map_err(|source| StartError::Listen { addr: addr.clone(), source })?;
        let bound = listener.local_addr().map_err(|source| StartError::Listen { addr: addr.clone(), source })?;
        // One line per address, for people and for tests that start otpweb on port 0.
        println!("otpweb listening on https://{bound}");
        listeners.push(listener);
    }
    let app = pages::router(otpd::Otpd::new(settings.socket.clone()), settings.origin.clone());
    tokio::select! {
        () = server::serve(listeners, tls, app) => {}
        () = shutdown_signal() => tracing::info!("stopping"),
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
