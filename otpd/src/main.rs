#![warn(clippy::too_many_lines)]
#![cfg_attr(test, allow(clippy::too_many_lines))]
use clap::Parser;
use common::config::Config;
use otpd::cli::OtpdArgs as Args;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("OTPD_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // A missing default config means "all defaults"; a named file must exist.
    let config = if !args.config.exists() && args.config.as_path() == std::path::Path::new(common::DEFAULT_CONFIG) {
        Ok(Config::default())
    } else {
        Config::load(&args.config)
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("otpd: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if args.check_config {
        println!("{}: configuration OK", args.config.display());
        return std::process::ExitCode::SUCCESS;
    }
    // An agent only relays small messages between sockets: one thread
    // costs fewer cross-CPU wake-ups than two workers handing them around
    // (as the standalone daemon's login thread does; see daemon.rs).
    let mut builder = match config.role {
        common::config::Role::Agent => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("otpd: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(otpd::daemon::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otpd: {e}");
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
