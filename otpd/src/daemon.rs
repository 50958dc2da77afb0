//! Start-up and shutdown of the daemon.
use crate::core::auth::Policy;
use crate::core::crypto::SecretBox;
use crate::pam::listener::{serve_admin, serve_pam, Limits, Shared};
use crate::store::db::Db;
use crate::store::sqlite::SqliteStore;
use crate::sys::clock::{Clock, SystemClock};
use common::config::{Config, Role};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Key(#[from] crate::core::crypto::KeyError),
    #[error(transparent)]
    Store(#[from] crate::store::sqlite::StoreError),
    #[error("socket {path}: {why}")]
    Socket { path: String, why: String },
    #[error("refusing to start: {0}")]
    Untrusted(#[from] crate::sys::trust::Untrusted),
    #[error("fleet: {0}")]
    Fleet(String),
}

/// Where otpd keeps its secrets and sockets must be out of other users'
/// reach before anything is created or read there (see [`crate::sys::trust`]).
fn check_trusted_paths(d: &common::config::DaemonConfig) -> Result<(), StartError> {
    let postgres = common::config::is_postgres_url(&d.database);
    let mut paths = vec![(&d.key_file, "state"), (&d.pam_socket, "socket"), (&d.admin_socket, "socket")];
    if !postgres {
        paths.push((&d.database, "state"));
    }
    for (path, what) in paths {
        if let Some(dir) = path.parent() {
            crate::sys::trust::check_dir(dir, what)?;
        }
    }
    crate::sys::trust::check_file(&d.key_file, "key file")?;
    if !postgres {
        for (f, what) in crate::sys::trust::database_files(&d.database) {
            crate::sys::trust::check_file(&f, what)?;
        }
    }
    Ok(())
}

/// The database: SQLite (with its read-only login-path connection) or,
/// for a server, PostgreSQL.
fn open_database(config: &Config) -> Result<(Db, Option<SqliteStore>), StartError> {
    let d = &config.daemon;
    if common::config::is_postgres_url(&d.database) {
        let url = d.database.to_str().unwrap_or_default();
        return Ok((Db::start_postgres(url, config.fleet.db_connections)?, None));
    }
    let store = SqliteStore::open(&d.database)?;
    // SQLite gives -wal and -shm the database's mode as it was when it made them.
    for (f, _) in crate::sys::trust::database_files(&d.database) {
        let _ = std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600));
    }
    let reader = SqliteStore::open_reader(&d.database)?;
    Ok((Db::start(store), Some(reader)))
}

/// The password in a postgresql:// URL never reaches the log or `status`.
fn shown_database(database: &Path) -> String {
    match database.to_str().filter(|_| common::config::is_postgres_url(database)) {
        Some(url) => crate::store::postgres::async_config(url)
            .map(|c| crate::store::postgres::describe(&c))
            .unwrap_or_else(|_| "postgresql://(unusable URL)".into()),
        None => database.display().to_string(),
    }
}

/// The fleet CA, made by the first server of a database and shared by all
/// of them through it (the key sealed with the key file they share), and
/// this server's own certificate for its names.
async fn fleet_server(
    config: &Config,
    db: &Db,
    crypto: &SecretBox,
) -> Result<crate::fleet::link::FleetServer, StartError> {
    let fail = |e: String| StartError::Fleet(e);
    const AAD: &str = "otpd fleet CA key";
    let stored = db.run(|st| st.fleet_ca()).await?;
    let (cert_pem, sealed) = match stored {
        Some(ca) => ca,
        None => {
            let ca = crate::fleet::pki::Ca::generate().map_err(|e| fail(e.to_string()))?;
            let sealed = crypto.seal(AAD, ca.key_pem().as_bytes());
            let cert_pem = ca.cert_pem();
            // Two servers starting together: the first CA stored wins.
            db.run(move |st| st.set_fleet_ca_if_absent(&cert_pem, &sealed)).await?;
            db.run(|st| st.fleet_ca()).await?.ok_or_else(|| fail("the fleet CA was not stored".into()))?
        }
    };
    let key = crypto.open(AAD, &sealed).ok_or_else(|| {
        fail("the fleet CA key cannot be decrypted: every server of one database needs the same key file".into())
    })?;
    let key = zeroize::Zeroizing::new(String::from_utf8(key).map_err(|_| fail("the fleet CA key is corrupt".into()))?);
    let ca = crate::fleet::pki::Ca::from_pem(&cert_pem, &key).map_err(|e| fail(e.to_string()))?;
    let mut names = config.fleet.names.clone();
    if names.is_empty() {
        names.push(hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "localhost".into()));
    }
    let fleet = crate::fleet::link::FleetServer::new(ca, names).map_err(|e| fail(e.to_string()))?;
    // Room on the fleet port is kept for the addresses hosts last came
    // from, also right after this restart (check 36).
    for h in db.read(|st| st.hosts()).await? {
        if let (None, Some(seen), Some(Ok(ip))) = (h.revoked_at, h.last_seen, h.last_addr.as_deref().map(str::parse)) {
            fleet.admission.known(ip, seen);
        }
    }
    Ok(fleet)
}

/// Core dumps of a process holding secrets are a leak; so is ptrace by
/// same-uid processes. Both are switched off before any secret is loaded.
pub fn harden_process() {
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    // SAFETY: prctl with PR_SET_DUMPABLE takes integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
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

/// Binds a socket path, replacing a stale socket but never a live daemon's
/// socket or a file that is not a socket.
pub(crate) fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<UnixListener, StartError> {
    let fail = |why: String| StartError::Socket { path: path.display().to_string(), why };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create directory: {e}")))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(fail("another otpd is already listening there".into()));
            }
            std::fs::remove_file(path).map_err(|e| fail(format!("cannot remove stale socket: {e}")))?;
        }
        Ok(_) => return Err(fail("exists and is not a socket; refusing to replace it".into())),
        Err(_) => {}
    }
    // Bound under a temporary name and renamed into place once it listens
    // with its final mode: a client that sees the path (a login at boot, a
    // test that waits for the file) never meets a socket that is not yet
    // listening (ECONNREFUSED) or not yet open to it (EACCES).
    let tmp = path.with_file_name(format!(".otpd-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let ready = || -> Result<UnixListener, String> {
        let listener = UnixListener::bind(&tmp).map_err(|e| e.to_string())?;
        // A burst of logins (or of junk connections) must not find the accept
        // queue full: connect(2) would then block or fail for real logins.
        // SAFETY: listen(2) on a socket we own; calling it again only resizes the queue.
        unsafe { libc::listen(std::os::unix::io::AsRawFd::as_raw_fd(&listener), 4096) };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
        if let Some(gid) = group {
            let _ = nix::unistd::chown(&tmp, None, Some(nix::unistd::Gid::from_raw(gid)));
        }
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
        Ok(listener)
    };
    ready().map_err(|why| {
        let _ = std::fs::remove_file(&tmp);
        fail(why)
    })
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
    shared: Arc<crate::pam::listener::Shared>,
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

/// Every PAM connection is a file descriptor; systemd's default soft limit
/// (1024) would make a flood of idle connections lock out real logins long
/// before `max_connections`.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = hard.min(65536);
        if soft < want {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, want, hard);
        }
    }
}

/// Tells systemd (Type=notify) that the sockets are ready.
pub(crate) fn notify_ready() {
    let Some(addr) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let bytes = addr.as_encoded_bytes();
    let r = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", Path::new(&addr))
    };
    if let Err(e) = r {
        tracing::warn!("sd_notify failed: {e}");
    }
}

pub fn hostname_issuer(issuer: &str) -> String {
    let host = hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "localhost".into());
    issuer.replace("%hostname%", &host).replace(':', "-")
}

/// The system clock. Debug builds (the test suite) may shift it by the
/// number of seconds in the file named by `OTPD_TEST_CLOCK_FILE`, or pin it
/// (`@SECONDS`), so expiry is tested without sleeping and TOTP codes without
/// racing a step boundary; release builds have no such hook.
fn make_clock() -> Box<dyn Clock> {
    #[cfg(debug_assertions)]
    if let Some(path) = std::env::var_os("OTPD_TEST_CLOCK_FILE") {
        return Box::new(crate::sys::clock::OffsetFileClock(path.into()));
    }
    Box::new(SystemClock)
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
    check_trusted_paths(d)?;
    let (crypto, created) = SecretBox::load_or_create(&d.key_file)?;
    if created {
        tracing::info!("created key file {}", d.key_file.display());
    }
    let (db, reader) = open_database(&config)?;
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
    let clock = make_clock();
    let admin_gid = nix::unistd::Group::from_name(&d.admin_group).ok().flatten().map(|g| g.gid.as_raw());
    let machine = machine_id(&d.machine_id);
    let limit_settings = (
        d.caller_logins_per_minute,
        crate::core::limits::Caps {
            per_caller: d.caller_max_logins,
            per_target: d.target_max_logins,
            unprivileged: d.unprivileged_connections(),
        },
    );
    let shared = Arc::new(Shared {
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
        started_at: clock.now(),
        clock,
        io_timeout: d.io_timeout,
        prompt_timeout: d.prompt_timeout,
        admin_gid,
        database: shown_database(&d.database),
        open_connections: AtomicU64::new(0),
        per_uid: Default::default(),
        silent: Default::default(),
        next_connection: AtomicU64::new(0),
        last_flood_warning: Default::default(),
        reader: reader.map(std::sync::Mutex::new),
        mail_wakeup: Arc::new(tokio::sync::Notify::new()),
        events: tokio::sync::broadcast::channel(1024).0,
        limits: Arc::new(crate::core::limits::CallerLimits::new(&machine, limit_settings.0, limit_settings.1)),
        host_limits: Default::default(),
        limit_settings,
        fleet: fleet.clone(),
        enroll_on_agents: config.fleet.enroll_on_agents,
        host_logins_per_minute: config.fleet.host_logins_per_minute,
    });
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
    let mut fleet_tasks = Vec::new();
    if let Some(fleet) = &fleet {
        fleet_tasks.push(tokio::spawn(crate::fleet::link::renew(fleet.clone())));
        for addr in &config.fleet.listen {
            tracing::info!("fleet server {} listening on {addr} (TLS 1.3, client certificates required)", fleet.name);
        }
    }
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
    housekeeping.abort();
    for t in fleet_tasks {
        t.abort();
    }
    // Refusals counted but not yet written are written now.
    crate::core::limits::flush(&shared, true).await;
    let _ = std::fs::remove_file(&d.pam_socket);
    let _ = std::fs::remove_file(&d.admin_socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[test]
    fn a_socket_path_appears_only_listening_and_with_its_final_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pam.sock");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        // The test itself takes each socket away (unlink, then close): a
        // connect already past the path lookup would meet the closed socket.
        // So the watcher stands still (`idle`) while the test holds it.
        let hold = Arc::new(AtomicBool::new(false));
        let idle = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (path, stop, seen) = (path.clone(), stop.clone(), seen.clone());
            let (hold, idle) = (hold.clone(), idle.clone());
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if hold.load(Ordering::SeqCst) {
                        idle.store(true, Ordering::SeqCst);
                        while hold.load(Ordering::SeqCst) && !stop.load(Ordering::Relaxed) {
                            std::thread::yield_now();
                        }
                        idle.store(false, Ordering::SeqCst);
                        continue;
                    }
                    let Ok(m) = std::fs::symlink_metadata(&path) else { continue };
                    if m.permissions().mode() & 0o777 != 0o666 {
                        bad.push(format!("mode {:o}", m.permissions().mode() & 0o777));
                    }
                    match std::os::unix::net::UnixStream::connect(&path) {
                        Ok(_) => {
                            // One connection to this socket is enough. More
                            // would pile up unaccepted until its backlog is
                            // full, and then connect(2) blocks for good: on a
                            // loaded machine this test hung that way.
                            seen.fetch_add(1, Ordering::Relaxed);
                            while !hold.load(Ordering::SeqCst) && !stop.load(Ordering::Relaxed) {
                                std::thread::yield_now();
                            }
                            continue;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => bad.push(e.to_string()),
                    }
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                bad
            })
        };
        for _ in 0..300 {
            let before = seen.load(Ordering::Relaxed);
            let listener = bind(&path, 0o666, None).unwrap();
            // The watcher looks at every socket at least once.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while seen.load(Ordering::Relaxed) == before {
                assert!(std::time::Instant::now() < deadline, "the watcher never saw the socket");
                std::thread::yield_now();
            }
            hold.store(true, Ordering::SeqCst);
            while !idle.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            std::fs::remove_file(&path).unwrap();
            drop(listener);
            hold.store(false, Ordering::SeqCst);
            while idle.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
        }
        stop.store(true, Ordering::Relaxed);
        let bad = watcher.join().unwrap();
        assert!(bad.is_empty(), "a client met a socket not ready for it: {bad:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temporary name left behind");
    }
}
