//! Properties of the built shared object itself.
use crate::support;
use std::process::Command;
use support::*;

#[test]
fn exports_only_pam_entry_points() {
    let _turn = support::shared();
    let out = Command::new("nm").args(["-D", "--defined-only"]).arg(module_path()).output().unwrap();
    assert!(out.status.success());
    let symbols: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(String::from))
        .collect();
    assert!(symbols.contains(&"pam_sm_authenticate".to_string()), "{symbols:?}");
    let others: Vec<&String> = symbols.iter().filter(|s| !s.starts_with("pam_sm_")).collect();
    assert!(others.is_empty(), "unexpected exports: {others:?}");
}

#[test]
fn module_has_no_async_runtime_or_threads() {
    let _turn = support::shared();
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    for krate in ["tokio", "async-std", "rayon"] {
        let out = Command::new(env!("CARGO"))
            .args(["tree", "--offline", "--manifest-path", manifest, "-p", "pam_otp", "-e", "normal", "-i", krate])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains(krate) || !out.status.success(), "{krate} is in pam_otp's tree:\n{text}");
    }
    // And the object links no pthread_create of its own.
    let out = Command::new("nm").args(["-D", "--undefined-only"]).arg(module_path()).output().unwrap();
    let undefined = String::from_utf8_lossy(&out.stdout);
    assert!(!undefined.contains("pthread_create") && !undefined.contains(" fork"), "{undefined}");
}

/// A panic inside the module (here forced by a debug-build-only option)
/// must come out of libpam as a failure — never SUCCESS or IGNORE, not even
/// with fail=open — and must not take the calling program down.
#[test]
fn a_panic_inside_the_module_is_a_failure() {
    let _turn = support::shared();
    const PAM_ABORT: i32 = 26;
    let fx = Fixture::start("");
    fx.write_service("panicky", "test_panic fail=open");
    let r = fx.login_with("panicky", "alice", &[b"123456"]);
    assert!(r.out.contains("result:"), "the calling program did not survive: {}", r.out);
    assert_eq!(r.code, PAM_ABORT, "{}", r.out);
}

/// The module acts only on its stack arguments: no code in it (or in the
/// parts of `common` it links) reads the environment, which a user
/// controls in su, sudo and screen lockers.
#[test]
fn module_reads_no_environment() {
    let _turn = support::shared();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut files: Vec<std::path::PathBuf> =
        std::fs::read_dir(format!("{root}/pam_otp/src")).unwrap().map(|e| e.unwrap().path()).collect();
    for f in ["client.rs", "codec.rs", "proto.rs", "text.rs", "lib.rs"] {
        files.push(format!("{root}/common/src/{f}").into());
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for needle in ["std::env", "env::var", "getenv", "secure_getenv"] {
            assert!(!text.contains(needle), "{} uses {needle}", f.display());
        }
    }
}
