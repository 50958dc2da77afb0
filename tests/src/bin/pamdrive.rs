//! pamdrive SERVICE USER [--confdir DIR] [--tty T] [--rhost H] [--session] [--barrier FIFO] [ANSWER...]
//!
//! Runs one pam_authenticate through the real libpam (use under pam_wrapper)
//! answering prompts with the ANSWER arguments in order (raw bytes, so
//! non-UTF-8 answers can be tested). Prints the conversation, then
//! `result: CODE MESSAGE`, and exits with the PAM return code. An answer
//! written `hex:…` is decoded first, so NUL bytes can be tested; `file:PATH`
//! reads the answer from a file (answers larger than argv allows).
//! `--barrier FIFO` blocks in open(2) of the FIFO until a writer opens it,
//! so a test can release many processes at the same instant.
use std::os::unix::ffi::OsStringExt;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(service), Some(user)) = (args.next(), args.next()) else {
        eprintln!("usage: pamdrive SERVICE USER [--tty T] [--rhost H] [ANSWER...]");
        std::process::exit(100);
    };
    let (mut confdir, mut tty, mut rhost, mut answers, mut session) = (None, None, None, Vec::new(), false);
    let mut barrier = None;
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--confdir") => confdir = args.next().map(|s| s.to_string_lossy().into_owned()),
            Some("--session") => session = true,
            Some("--barrier") => barrier = args.next(),
            Some("--tty") => tty = args.next().map(|s| s.to_string_lossy().into_owned()),
            Some("--rhost") => rhost = args.next().map(|s| s.to_string_lossy().into_owned()),
            _ => answers.push(decode(a.into_vec())),
        }
    }
    if let Some(fifo) = barrier {
        if let Err(e) = std::fs::File::open(&fifo) {
            eprintln!("barrier {}: {e}", fifo.to_string_lossy());
            std::process::exit(101);
        }
    }
    let login = e2e::authenticate(
        confdir.as_deref(),
        &service.to_string_lossy(),
        &user.to_string_lossy(),
        answers,
        tty.as_deref(),
        rhost.as_deref(),
        session,
    );
    print!("{}", login.transcript);
    println!("result: {} {}", login.code, login.error);
    std::process::exit(login.code);
}

fn decode(arg: Vec<u8>) -> Vec<u8> {
    if let Some(path) = arg.strip_prefix(b"file:") {
        return std::fs::read(String::from_utf8_lossy(path).as_ref()).unwrap_or_default();
    }
    match arg.strip_prefix(b"hex:") {
        Some(hex) => hex
            .chunks(2)
            .filter_map(|p| std::str::from_utf8(p).ok().and_then(|s| u8::from_str_radix(s, 16).ok()))
            .collect(),
        None => arg,
    }
}
