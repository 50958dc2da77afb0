//! Files and directories otpd trusts with its secrets. The key file and the
//! database (with its `-wal` and `-shm` files) must belong to the daemon's
//! uid, and no other user may be able to create files where they live: in a
//! directory others can write to, an attacker pre-creates `secret.key` (and
//! knows the key) or `otpd.db-wal` (and reads every change), and otpd would
//! use them. Checked once at start; otpd refuses to start otherwise.
//!
//! Group write: a directory may be group-writable only by the daemon's own
//! group (root's for a daemon running as root); any other group's members
//! could plant files as well as "others" could.
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {why}")]
pub struct Untrusted {
    pub path: String,
    pub why: String,
}

fn untrusted(path: &Path, why: String) -> Untrusted {
    Untrusted { path: path.display().to_string(), why }
}

fn user_name(uid: u32) -> String {
    // Start-up only: the login path never looks users up.
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("uid {uid} ({})", u.name),
        _ => format!("uid {uid}"),
    }
}

fn group_name(gid: u32) -> String {
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(g)) => format!("gid {gid} ({})", g.name),
        _ => format!("gid {gid}"),
    }
}

fn chown_hint(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

/// A file holding or revealing secrets (`what`: "key file", ...): absent,
/// or a regular file owned by the daemon's uid.
pub fn check_file(path: &Path, what: &str) -> Result<(), Untrusted> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(untrusted(path, e.to_string())),
    };
    if meta.file_type().is_symlink() {
        return Err(untrusted(
            path,
            format!("the {what} is a symbolic link; otpd does not follow links to its state: remove it"),
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(untrusted(
            path,
            format!(
                "the {what} is owned by {}, not by {} that otpd runs as: another user may have created it to \
                 read or replace what otpd keeps there. Find out how it got there; if you cannot, remove it (a \
                 planted key file means re-enrolling every user), otherwise `chown {} {}`",
                user_name(meta.uid()),
                user_name(me),
                chown_hint(me),
                path.display()
            ),
        ));
    }
    Ok(())
}

/// The directory holding `what` (state or socket), and every directory
/// above it: nobody but the daemon (or root) may create or rename entries.
pub fn check_dir(dir: &Path, what: &str) -> Result<(), Untrusted> {
    let me = nix::unistd::geteuid().as_raw();
    let my_gid = nix::unistd::getegid().as_raw();
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            if meta.file_type().is_symlink() {
                return Err(untrusted(
                    dir,
                    format!("the {what} directory is a symbolic link; give otpd the real path"),
                ));
            }
            if meta.uid() != me && meta.uid() != 0 {
                return Err(untrusted(
                    dir,
                    format!(
                        "the {what} directory is owned by {}, not by root or {}: its owner can plant or swap \
                         otpd's files. Check its content, then `chown {} {}`",
                        user_name(meta.uid()),
                        user_name(me),
                        chown_hint(me),
                        dir.display()
                    ),
                ));
            }
            // Sticky or not: the sticky bit stops others from removing our
            // files, not from creating the names otpd has yet to create.
            write_bits(dir, &meta, &format!("{what} directory"), my_gid, false)?;
        }
        // Created later by otpd itself (the socket directory) or reported
        // when the file in it is opened; what is above it still matters.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(untrusted(dir, e.to_string())),
    }
    for ancestor in dir.ancestors().skip(1) {
        match std::fs::metadata(ancestor) {
            Ok(meta) => write_bits(ancestor, &meta, &format!("{what} directory's parent"), my_gid, true)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(untrusted(ancestor, e.to_string())),
        }
    }
    Ok(())
}

fn risk(what: &str) -> &'static str {
    if what.starts_with("socket") {
        "put a socket of their own where pam_otp.so expects otpd's"
    } else if what.starts_with("ssl") {
        "swap the certificates or the key otpd trusts for PostgreSQL"
    } else {
        "plant the key file, the database or its -wal file there, or swap the directory"
    }
}

/// Refuses others' write permission (and another group's). Above the
/// directory itself, the sticky bit (as on /tmp) is enough: it keeps others
/// from renaming our directory away.
fn write_bits(dir: &Path, meta: &std::fs::Metadata, what: &str, my_gid: u32, sticky_ok: bool) -> Result<(), Untrusted> {
    let mode = meta.mode();
    if sticky_ok && mode & 0o1000 != 0 {
        return Ok(());
    }
    let fix = if sticky_ok { "chmod o-w,g-w (or +t)" } else { "chmod o-w,g-w" };
    if mode & 0o002 != 0 {
        return Err(untrusted(
            dir,
            format!(
                "the {what} is writable by every user (mode {:04o}): anyone could {}. Run `{fix} {}` \
                 (otpd's own directories are root's, 0700 and 0755)",
                mode & 0o7777,
                risk(what),
                dir.display()
            ),
        ));
    }
    if mode & 0o020 != 0 && meta.gid() != my_gid {
        return Err(untrusted(
            dir,
            format!(
                "the {what} is writable by group {}, which is not otpd's group ({}) (mode {:04o}): its members \
                 could {}. Run `{fix} {}`",
                group_name(meta.gid()),
                group_name(my_gid),
                mode & 0o7777,
                risk(what),
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// The SQLite files that belong to `database`, with what they are.
pub fn database_files(database: &Path) -> [(PathBuf, &'static str); 3] {
    let with = |suffix: &str| {
        let mut s = database.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    [
        (database.to_path_buf(), "database"),
        (with("-wal"), "database's write-ahead log"),
        (with("-shm"), "database's shared-memory file"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn own_files_and_private_directories_pass() {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o700);
        let f = dir.path().join("otpd.db");
        assert!(check_file(&f, "database").is_ok(), "absent is fine");
        std::fs::write(&f, b"x").unwrap();
        assert!(check_file(&f, "database").is_ok());
        assert!(check_dir(dir.path(), "state").is_ok());
        // Group-writable by the daemon's own group: accepted (and documented).
        chmod(dir.path(), 0o770);
        assert!(check_dir(dir.path(), "state").is_ok());
    }

    #[test]
    fn others_write_and_foreign_owners_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o777, 0o1777, 0o773] {
            chmod(dir.path(), mode);
            let e = check_dir(dir.path(), "state").unwrap_err().to_string();
            assert!(e.contains("writable by every user") && e.contains("chmod o-w"), "{mode:o}: {e}");
        }
        chmod(dir.path(), 0o770);
        std::os::unix::fs::chown(dir.path(), None, Some(65534)).unwrap();
        let e = check_dir(dir.path(), "state").unwrap_err().to_string();
        assert!(e.contains("writable by group gid 65534"), "{e}");
        chmod(dir.path(), 0o755);
        std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
        let e = check_dir(dir.path(), "state").unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        std::os::unix::fs::chown(dir.path(), Some(0), Some(0)).unwrap();

        // Above the directory: world-writable without the sticky bit is refused, /tmp's 1777 is not.
        let inner = dir.path().join("state");
        std::fs::create_dir(&inner).unwrap();
        chmod(dir.path(), 0o777);
        let e = check_dir(&inner, "state").unwrap_err().to_string();
        assert!(e.contains("parent") && e.contains(&dir.path().display().to_string()), "{e}");
        chmod(dir.path(), 0o1777);
        assert!(check_dir(&inner, "state").is_ok());
        chmod(dir.path(), 0o700);

        let f = inner.join("secret.key");
        std::fs::write(&f, [0u8; 32]).unwrap();
        std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
        let e = check_file(&f, "key file").unwrap_err().to_string();
        assert!(e.contains("secret.key: the key file is owned by uid 65534 (nobody)"), "{e}");
        let link = inner.join("otpd.db");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(check_file(&link, "database").unwrap_err().to_string().contains("symbolic link"));
    }

    #[test]
    fn database_file_names() {
        let [(db, _), (wal, _), (shm, _)] = database_files(Path::new("/var/lib/otpd/otpd.db"));
        assert_eq!(
            (db.to_str(), wal.to_str(), shm.to_str()),
            (Some("/var/lib/otpd/otpd.db"), Some("/var/lib/otpd/otpd.db-wal"), Some("/var/lib/otpd/otpd.db-shm"))
        );
    }
}
