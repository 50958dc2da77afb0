//! `otpctl import oath|google-authenticator`: users of pam_oath and of
//! pam_google_authenticator become otpd users with the same secret, in one
//! transaction (or none with `dry_run`).
use crate::admin::ops::shared::{admin_audit, err, finish, By};
use crate::core::access::account_uid;
use crate::core::service::Core;
use crate::import::oath::{OathEntry, Outcome};
use common::proto::{AdminErrorKind, AdminResponse, ImportAccount, Method};

/// `import oath`: a pam_oath users file (its text), answered with a line
/// per line of the file that was not a comment, then the counts.
pub async fn oath(core: &Core, by: &By, content: String, dry_run: bool) -> AdminResponse {
    let now = core.clock.now();
    let (entries, problems) = crate::import::oath::parse_oath(&content);
    let uids: Vec<Option<u32>> = entries.iter().map(|e| account_uid(&e.user)).collect();
    let (policy, by) = (core.policy.clone(), by.clone());
    let r = core
        .db
        .run(move |st| {
            let outcomes = crate::import::oath::import(st, &policy, &entries, &uids, dry_run, now)?;
            for (e, o) in entries.iter().zip(&outcomes) {
                if !dry_run && *o == Outcome::Imported {
                    let action = format!("import from pam_oath ({})", oath_token(e));
                    admin_audit(st, &policy.machine, &e.user, &action, &by, now)?;
                }
            }
            Ok(AdminResponse::Done { message: oath_report(&entries, &outcomes, problems, dry_run).join("\n") })
        })
        .await;
    finish(r)
}

/// "hotp, 6 digits, counter 12" / "totp, 6 digits": an imported token.
fn oath_token(e: &OathEntry) -> String {
    match e.method {
        Method::Hotp => format!("hotp, {} digits, counter {}", e.digits, crate::import::oath::next_counter(e)),
        _ => format!("totp, {} digits", e.digits),
    }
}

/// The report of an oath import: the file's problems and a line per entry,
/// in the file's line order, then the counts.
fn oath_report(entries: &[OathEntry], outcomes: &[Outcome], problems: Vec<String>, dry_run: bool) -> Vec<String> {
    let (mut imported, mut unchanged, mut skipped) = (0, 0, problems.len());
    let mut lines = problems;
    for (e, o) in entries.iter().zip(outcomes) {
        match o {
            Outcome::Imported => {
                imported += 1;
                let verb = if dry_run { "would be imported" } else { "imported" };
                lines.push(format!("line {}: {}: {verb} ({})", e.line, e.user, oath_token(e)));
            }
            Outcome::Unchanged => {
                unchanged += 1;
                lines.push(format!("line {}: {}: already imported, unchanged", e.line, e.user));
            }
            Outcome::Skipped(why) => {
                skipped += 1;
                lines.push(format!("line {}: skipped: {why}", e.line));
            }
        }
    }
    lines.sort_by_key(|l| {
        l.strip_prefix("line ").and_then(|r| r.split(':').next()).and_then(|n| n.parse::<usize>().ok())
    });
    let tail = if dry_run { " (dry run: nothing was changed)" } else { "" };
    lines.push(format!("{imported} imported, {unchanged} unchanged, {skipped} skipped{tail}"));
    lines
}

/// `import google-authenticator`: accounts read by otpctl from
/// `~/.google_authenticator` files; their scratch codes become recovery
/// codes (hashed off the database thread).
pub async fn google_authenticator(core: &Core, by: &By, accounts: Vec<ImportAccount>, dry_run: bool) -> AdminResponse {
    let now = core.clock.now();
    let policy = core.policy.clone();
    // Accounts already imported with their secret stay unchanged:
    // their scratch codes are not hashed again (a second run of
    // 100,000 files would take as long as the first).
    let names = accounts.iter().map(|a| a.user.clone()).collect::<Vec<_>>();
    let Ok(done) = core.db.read(move |st| crate::import::gaimport::already_enabled(st, &names)).await else {
        return err(AdminErrorKind::Internal, "reading the users to import failed");
    };
    // Scratch codes are argon2id hashes: prepared off the database thread.
    let p = policy.clone();
    let prepared =
        tokio::task::spawn_blocking(move || crate::import::gaimport::prepare_all(&p, accounts, dry_run, &done)).await;
    let Ok(prepared) = prepared else { return err(AdminErrorKind::Internal, "preparing the import failed") };
    let mut skipped = Vec::new();
    let mut ready = Vec::new();
    for r in prepared {
        match r {
            Ok(a) => ready.push(a),
            Err(s) => skipped.push(s),
        }
    }
    let by = by.to_string();
    let r = core
        .db
        .run(move |st| {
            let mut results = skipped;
            results.extend(crate::import::gaimport::import(st, &policy, ready, dry_run, &by, now)?);
            Ok(AdminResponse::Imported { results })
        })
        .await;
    finish(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::ops::shared::fixture::*;
    use common::proto::ImportResult;

    const HEX: &str = "3132333435363738393031323334353637383930";

    fn users_file() -> String {
        format!(
            "# pam_oath users\nHOTP ut-hank - {HEX} 5 755224\nHOTP/T30 ut-tess - {HEX}\nHOTP ut-pin 1234 {HEX}\n\
             BOGUS ut-x - 00\nHOTP/T60 ut-sam - {HEX}\n"
        )
    }

    const SKIPPED: &str = "line 4: skipped: ut-pin has a PIN, which pam_otp does not ask for; enroll ut-pin with \
                           `otpctl user enable` instead\n\
                           line 5: skipped: unknown token type \"BOGUS\" (HOTP, HOTP/E[/digits], HOTP/T30[/digits], \
                           HOTP/T60[/digits])\n\
                           line 6: skipped: ut-sam uses 60 s steps and this otpd 30 s (totp.period)\n";

    #[tokio::test]
    async fn oath_imports_the_valid_lines_and_reports_every_line() {
        let core = core();
        let message = done(oath(&core, &ROOT, users_file(), false).await);
        let expected = format!(
            "line 2: ut-hank: imported (hotp, 6 digits, counter 6)\nline 3: ut-tess: imported (totp, 6 digits)\n\
             {SKIPPED}2 imported, 0 unchanged, 3 skipped"
        );
        assert_eq!(message, expected);
        let hank = user(&core, "ut-hank").await.unwrap();
        assert_eq!(
            (hank.method, hank.hotp_counter, hank.digits, hank.activated_at),
            (Method::Hotp, Some(6), Some(6), Some(T0))
        );
        assert_eq!(
            core.policy.crypto.open("ut-hank", hank.secret.as_deref().unwrap()).unwrap(),
            b"12345678901234567890"
        );
        let tess = user(&core, "ut-tess").await.unwrap();
        assert_eq!((tess.method, tess.enabled, tess.activated_at), (Method::Totp, true, Some(T0)));
        for name in ["ut-pin", "ut-x", "ut-sam"] {
            assert!(user(&core, name).await.is_none(), "{name}");
        }
        assert_eq!(
            one_admin_row(&core, "ut-hank").await,
            ("import from pam_oath (hotp, 6 digits, counter 6)".into(), "by uid 0".into())
        );
        assert_eq!(one_admin_row(&core, "ut-tess").await.0, "import from pam_oath (totp, 6 digits)");
        assert_eq!(all_audit(&core).await.len(), 2);
        // Again: nothing new.
        let message = done(oath(&core, &ROOT, users_file(), false).await);
        let expected = format!(
            "line 2: ut-hank: already imported, unchanged\nline 3: ut-tess: already imported, unchanged\n\
             {SKIPPED}0 imported, 2 unchanged, 3 skipped"
        );
        assert_eq!(message, expected);
        assert_eq!(all_audit(&core).await.len(), 2);
    }

    #[tokio::test]
    async fn an_oath_dry_run_reports_and_changes_nothing() {
        let core = core();
        let message = done(oath(&core, &ROOT, users_file(), true).await);
        let expected = format!(
            "line 2: ut-hank: would be imported (hotp, 6 digits, counter 6)\n\
             line 3: ut-tess: would be imported (totp, 6 digits)\n\
             {SKIPPED}2 imported, 0 unchanged, 3 skipped (dry run: nothing was changed)"
        );
        assert_eq!(message, expected);
        assert!(on_db(&core, |st| st.users()).await.is_empty());
        assert!(all_audit(&core).await.is_empty());
        let empty = done(oath(&core, &ROOT, String::new(), false).await);
        assert_eq!(empty, "0 imported, 0 unchanged, 0 skipped");
    }

    fn account(user: &str) -> ImportAccount {
        ImportAccount {
            user: user.into(),
            uid: None,
            secret_b32: "HNZC5YSDIE7NXRUMF7LXGYJWBA".into(),
            step_size: 30,
            last_step: Some(T0 / 30 - 2),
            scratch_codes: vec!["12345678".into(), "87654321".into()],
            hotp_counter: None,
            window_size: None,
            rate_limit: None,
        }
    }

    fn results(resp: AdminResponse) -> Vec<(String, String)> {
        match resp {
            AdminResponse::Imported { results } => results
                .into_iter()
                .map(|ImportResult { user, outcome, .. }| (user, outcome.as_str().to_string()))
                .collect(),
            other => panic!("expected Imported, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn google_authenticator_imports_secrets_and_scratch_codes_once() {
        let core = core();
        let accounts = vec![account("ut-gina"), account("bad name")];
        let r = results(google_authenticator(&core, &ROOT, accounts.clone(), true).await);
        let pair = |u: &str, o: &str| (u.to_string(), o.to_string());
        // Refused accounts come first, then the others in order.
        assert_eq!(r, [pair("bad name", "skipped"), pair("ut-gina", "would import")]);
        assert!(on_db(&core, |st| st.users()).await.is_empty());
        assert!(all_audit(&core).await.is_empty());

        let r = results(google_authenticator(&core, &ROOT, accounts.clone(), false).await);
        assert_eq!(r, [pair("bad name", "skipped"), pair("ut-gina", "imported")]);
        let gina = user(&core, "ut-gina").await.unwrap();
        assert_eq!((gina.enabled, gina.activated_at, gina.last_step), (true, Some(T0), Some(T0 / 30 - 2)));
        assert_eq!(on_db(&core, |st| st.recovery_codes_left("ut-gina")).await, 2);
        let rows = audit_rows(&core, "ut-gina").await;
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].method.as_str(), rows[0].result.as_str()), ("admin", "import (google-authenticator)"));
        assert!(rows[0].reason.starts_with("by uid 0; TOTP secret"), "{}", rows[0].reason);

        let r = results(google_authenticator(&core, &ROOT, vec![account("ut-gina")], false).await);
        assert_eq!(r, [pair("ut-gina", "unchanged")]);
        assert_eq!(all_audit(&core).await.len(), 1);
    }
}
