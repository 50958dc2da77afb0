//! Start-up and shutdown of the daemon.
use crate::admin::socket::serve_admin;
use crate::core::crypto::SecretBox;
use crate::core::policy::Policy;
use crate::core::service::Core;
use crate::pam::listener::{serve_pam, Limits};
use crate::store::db::Db;
use crate::sys::start::{bind, harden_process, notify_ready, raise_fd_limit, StartError};
use common::config::{Config, Role};

use std::path::Path;
use std::sync::Arc;

/// Where otpd keeps its secrets and sockets must be out of other users'
/// reach before anything is created or read there (see [`crate::sys::trust`]).
fn check_trusted_paths(config: &Config) -> Result<(), StartError> {
    let d = &config.daemon;
    let local_database = Db::local_files(&d.database);
    let mut paths = vec![(&d.key_file, "state"), (&d.pam_socket, "socket"), (&d.admin_socket, "socket")];
    if config.web.enabled {
        paths.push((&config.web.socket, "socket"));
    }
    if local_database.is_some() {
        paths.push((&d.database, "state"));
    }
    for (path, what) in paths {
        if let Some(dir) = path.parent() {
            crate::sys::trust::check_dir(dir, what)?;
        }
    }
    crate::sys::trust::check_file(&d.key_file, "key file")?;
    for (f, what) in local_database.into_iter().flatten() {
        crate::sys::trust::check_file(&f, what)?;
    }
    Ok(())
}

/// The fleet CAs, the first made by the first server of a database and
/// shared by all of them through it (the keys sealed with the key file they
/// share), and this server's own certificate for its names.
async fn fleet_server(
    config: &Config,
    db: &Db,
    crypto: &SecretBox,
) -> Result<crate::fleet::link::FleetServer, StartError> {
    let fail = |e: String| StartError::Fleet(e);
    let clock = crate::fleet::pki::TlsClock::new(Arc::from(crate::sys::clock::configured()));
    let cas = crate::fleet::authority::Authority::load(db, crypto, clock.now()).await.map_err(fail)?;
    // Hosts added before hosts recorded their CA: the first one issued them.
    if cas.serving().id == 1 {
        let first = cas.serving().fingerprint.to_vec();
        db.run(move |st| st.set_hosts_ca_if_unknown(&first)).await?;
    }
    let authority = Arc::new(crate::fleet::authority::Authority::new(cas));
    let mut names = config.fleet.names.clone();
    if names.is_empty() {
        names.push(hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "localhost".into()));
    }
    let fleet = crate::fleet::link::FleetServer::new(authority, names, config.fleet.max_links, clock)
        .map_err(|e| fail(e.to_string()))?;
    // Room on the fleet port is kept for the addresses hosts last came
    // from, also right after this restart (check 36).
    for h in db.read(|st| st.hosts()).await? {
        if let (None, Some(seen), Some(Ok(ip))) = (h.revoked_at, h.last_seen, h.last_addr.as_deref().map(str::parse)) {
            fleet.admission.known(ip, seen);
        }
    }
    Ok(fleet)
}

fn machine_id(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => s.lines().next().unwrap_or_default().trim().chars().take(64).collect(),
        _ => {
            let host = hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into());
            tracing::warn!("cannot read machine id from {}; using host name {host:?}", path.display());
            host
        }
    }
}

/// Logins are served by their own thread running a single-threaded runtime:
/// a login is a few small messages, and one thread handling all of them
/// costs fewer cross-CPU wake-ups than handing connections between workers.
/// It also keeps logins away from the work of the main runtime (TLS to the
/// mail server, D-Bus, admin requests). On a fleet server the agents'
/// links are logins too, and so are served here (with the async
/// PostgreSQL connections they use: [`crate::store::pgfast`] makes them on first
/// use, from this thread).
fn spawn_pam_thread(
    listener: std::os::unix::net::UnixListener,
    shared: Arc<crate::core::service::Core>,
    limits: Limits,
    fleet: Option<(Vec<std::net::TcpListener>, Arc<crate::fleet::link::FleetServer>)>,
) -> Result<(tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>), StartError> {
    let fail = |why: String| StartError::Socket { path: "PAM server thread".into(), why };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| fail(e.to_string()))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("otpd-pam".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match crate::sys::conn::Listener::new(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!("PAM socket: {e}"),
                };
                if let Some((listeners, fleet)) = fleet {
                    for l in listeners {
                        match tokio::net::TcpListener::from_std(l) {
                            Ok(l) => drop(tokio::spawn(crate::fleet::link::serve(l, shared.clone(), fleet.clone()))),
                            Err(e) => return tracing::error!("fleet listener: {e}"),
                        }
                    }
                }
                tokio::select! {
                    _ = serve_pam(listener, shared, limits) => {}
                    _ = stopped => {}
                }
            })
        })
        .map_err(|e| fail(e.to_string()))?;
    Ok((stop, thread))
}

pub fn hostname_issuer(issuer: &str) -> String {
    let host = hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "localhost".into());
    issuer.replace("%hostname%", &host).replace(':', "-")
}

/// The core every door is given, from the configuration.
fn make_core(
    config: &Config,
    db: Db,
    crypto: SecretBox,
    admin_gid: Option<u32>,
    fleet_ca: Option<Arc<crate::fleet::authority::Authority>>,
) -> Core {
    let d = &config.daemon;
    let machine = machine_id(&d.machine_id);
    let caps = crate::core::limits::Caps {
        per_caller: d.caller_max_logins,
        per_target: d.target_max_logins,
        unprivileged: d.unprivileged_connections(),
    };
    let host_rate = config.fleet.host_logins_per_minute;
    Core::new(crate::core::service::Parts {
        db,
        policy: Arc::new(Policy {
            totp: (&config.totp).into(),
            hotp_window: config.hotp.window,
            require_group: config.daemon.require_group.clone(),
            lockout: config.lockout.clone(),
            issuer: hostname_issuer(&config.totp.issuer),
            machine: machine.clone(),
            crypto,
            email: config.email.clone(),
        }),
        clock: crate::sys::clock::configured(),
        io_timeout: d.io_timeout,
        prompt_timeout: d.prompt_timeout,
        admin_gid,
        database: Db::describe(&d.database),
        callers: crate::core::limits::Callers::new(&machine, d.caller_logins_per_minute, caps, host_rate),
        fleet_ca,
        enroll_on_agents: config.fleet.enroll_on_agents,
        host_cert_life: config.fleet.host_certificate_life.as_secs() as i64,
    })
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), StartError> {
    harden_process();
    crate::core::syslog::start();
    if config.role == Role::Agent {
        raise_fd_limit();
        return crate::fleet::agent::run(config).await;
    }
    let d = &config.daemon;
    check_trusted_paths(&config)?;
    let (crypto, created) = SecretBox::load_or_create(&d.key_file)?;
    if created {
        tracing::info!("created key file {}", d.key_file.display());
    }
    let db = Db::open(&d.database, config.fleet.db_connections)?;
    let fleet = match config.role {
        Role::Server => Some(Arc::new(fleet_server(&config, &db, &crypto).await?)),
        _ => None,
    };
    let mut fleet_listeners = Vec::new();
    for addr in config.fleet.listen.iter().filter(|_| fleet.is_some()) {
        let l = tokio::net::TcpListener::bind(addr.as_str())
            .await
            .and_then(|l| l.into_std())
            .map_err(|e| StartError::Socket { path: addr.clone(), why: e.to_string() })?;
        fleet_listeners.push(l);
    }
    raise_fd_limit();
    // Every fleet link and PAM connection is a descriptor, and so is the
    // database (SQLite's files, PostgreSQL's connections).
    let wanted = (config.fleet.max_links + d.max_connections + 256) as u64;
    if fleet.is_some() && crate::sys::start::fd_limit() < wanted {
        tracing::warn!(
            "open files limit {} is below fleet.max_links + daemon.max_connections + 256 = {wanted}: links beyond it \
             fail (raise LimitNOFILE in otpd.service)",
            crate::sys::start::fd_limit()
        );
    }
    let admin_gid = nix::unistd::Group::from_name(&d.admin_group).ok().flatten().map(|g| g.gid.as_raw());
    let fleet_ca = fleet.as_ref().map(|f| f.authority.clone());
    let shared = Arc::new(make_core(&config, db, crypto, admin_gid, fleet_ca));
    // Anyone may connect to the PAM socket (screen lockers run as the user);
    // SO_PEERCRED limits what a non-root caller can do.
    let pam = bind(&d.pam_socket, 0o666, None)?;
    let admin = bind(&d.admin_socket, if admin_gid.is_some() { 0o660 } else { 0o600 }, admin_gid)?;
    tracing::info!(
        "otpd {} listening on {} (admin {}), database {}",
        env!("CARGO_PKG_VERSION"),
        d.pam_socket.display(),
        d.admin_socket.display(),
        shared.database
    );
    let fleet_tasks = fleet.as_ref().map(|f| fleet_tasks(&config, f, &shared)).unwrap_or_default();
    notify_ready();
    let mail_task = if config.email.enabled {
        let mailer = crate::notify::mail::Mailer::from_config(&config.smtp, &hostname_issuer("%hostname%"))
            .map_err(|why| StartError::Socket { path: "[smtp]".into(), why })?;
        Some(tokio::spawn(crate::notify::mail::run(shared.clone(), mailer)))
    } else {
        None
    };
    let dbus_task = d.dbus.then(|| tokio::spawn(crate::admin::dbus::run(shared.clone())));
    let housekeeping = tokio::spawn(crate::core::housekeeping::run(shared.clone(), config.audit.retention));
    let limits = Limits { max_connections: d.max_connections, max_per_uid: d.max_connections_per_user };
    let fleet_links = fleet.clone().map(|f| (fleet_listeners, f));
    let (stop_pam, pam_thread) = spawn_pam_thread(pam, shared.clone(), limits, fleet_links)?;
    let admin = crate::sys::conn::Listener::new(admin)
        .map_err(|e| StartError::Socket { path: d.admin_socket.display().to_string(), why: e.to_string() })?;
    let admin_task = tokio::spawn(serve_admin(admin, shared.clone()));
    let web_task = match config.web.enabled {
        true => Some(start_web(&config, shared.clone())?),
        false => None,
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| StartError::Socket { path: "signal".into(), why: e.to_string() })?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    let _ = stop_pam.send(());
    let _ = tokio::task::spawn_blocking(move || pam_thread.join()).await;
    for t in [mail_task, dbus_task].into_iter().flatten() {
        t.abort();
    }
    admin_task.abort();
    if let Some(t) = web_task {
        t.abort();
        let _ = std::fs::remove_file(&config.web.socket);
    }
    housekeeping.abort();
    for t in fleet_tasks {
        t.abort();
    }
    // Refusals counted but not yet written are written now.
    crate::core::refusals::flush(&shared, true).await;
    let _ = std::fs::remove_file(&d.pam_socket);
    let _ = std::fs::remove_file(&d.admin_socket);
    Ok(())
}

/// A fleet server's own certificate kept fresh, its CAs those of the
/// database.
fn fleet_tasks(
    config: &Config,
    fleet: &Arc<crate::fleet::link::FleetServer>,
    shared: &Arc<Core>,
) -> Vec<tokio::task::JoinHandle<()>> {
    for addr in &config.fleet.listen {
        tracing::info!("fleet server {} listening on {addr} (TLS 1.3, client certificates required)", fleet.name);
    }
    let (authority, db, policy) = (fleet.authority.clone(), shared.db.clone(), shared.policy.clone());
    vec![
        tokio::spawn(crate::fleet::link::renew(fleet.clone())),
        tokio::spawn(crate::fleet::authority::follow(authority, db, policy)),
    ]
}

/// The web console's socket (`[web] enabled`): root and the `[web] group` may
/// connect; they act only through sessions the door issues.
fn start_web(config: &Config, core: Arc<Core>) -> Result<tokio::task::JoinHandle<()>, StartError> {
    let w = &config.web;
    let gid = nix::unistd::Group::from_name(&w.group).ok().flatten().map(|g| g.gid.as_raw());
    if gid.is_none() {
        tracing::warn!("web console: group {:?} does not exist; only root may use {}", w.group, w.socket.display());
    }
    let socket = bind(&w.socket, if gid.is_some() { 0o660 } else { 0o600 }, gid)?;
    let listener = crate::sys::conn::Listener::new(socket)
        .map_err(|e| StartError::Socket { path: w.socket.display().to_string(), why: e.to_string() })?;
    tracing::info!("web console socket {} (PAM service {:?})", w.socket.display(), w.pam_service);
    let door = Arc::new(crate::web::door::WebDoor::new(core, w));
    Ok(tokio::spawn(door.serve(listener)))
}
