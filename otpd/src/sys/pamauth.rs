//! The web console's password check: otpd as a PAM application of the
//! service `[web] pam_service` (`otpweb`: `@include common-auth` without
//! pam_otp, so the system's own password rules, faillock included, apply).
//! Blocking: run it off the async workers.

/// Whether `user` with `password` passes the service's `auth` and
/// `account` stacks. Any PAM failure (no such service, unknown user, wrong
/// password, expired account) is false; the reason goes to the debug log
/// only, never to the browser (no user enumeration).
pub fn check_password(service: &str, user: &str, password: &str) -> bool {
    let mut auth = match pam::Authenticator::with_password(service) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("PAM service {service:?} cannot start: {e:?}; console logins are refused");
            return false;
        }
    };
    auth.get_handler().set_credentials(user, password);
    match auth.authenticate() {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("console password check failed: {e:?}");
            false
        }
    }
}
