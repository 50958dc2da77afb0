//! What every response carries and what every request that changes
//! something must show: security headers, the Origin check, CSRF tokens,
//! cookie attributes.
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

/// No inline script or style anywhere: pages load /static files only.
/// `connect-src 'self'` lets requests.js poll /requests/live (with
/// `default-src 'none'` alone the browser blocks that fetch).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console session's token (set by otpd at a login).
pub const SESSION_COOKIE: &str = "__Host-otpweb";
/// A login or re-enrollment flow waiting for its next answer.
pub const FLOW_COOKIE: &str = "__Host-otpweb-flow";

/// The headers every response gets; `Cache-Control: no-store` unless the
/// handler chose otherwise (the static files).
pub fn apply_headers(headers: &mut HeaderMap) {
    let fixed: [(HeaderName, &'static str); 5] = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // same-origin: our own pages' posts carry their real Origin (under
        // no-referrer Chromium sends "null"); other sites learn nothing.
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

pub async fn headers_layer(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    apply_headers(response.headers_mut());
    response
}

/// Whether a request may go on: safe methods always; any other only when
/// its `Origin` is the console's own (`configured`, else `https://` + the
/// Host the browser asked for). A browser always sends Origin on a POST;
/// none, or another, is a cross-site request (or not a browser) and is
/// refused before anything reaches otpd.
///
/// One exception: a browser under a `no-referrer` policy (a user's own
/// setting or extension) sends `Origin: null` even on a same-origin form
/// post. Such a request passes only with `Sec-Fetch-Site: same-origin`,
/// which a browser sets itself (no page can) and only when the initiator
/// is this origin.
pub fn origin_allowed(method: &Method, headers: &HeaderMap, authority: Option<&str>, configured: Option<&str>) -> bool {
    if matches!(*method, Method::GET | Method::HEAD) {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if origin == "null" {
        return headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"same-origin");
    }
    let expected = match configured {
        Some(o) => o.to_string(),
        None => {
            // HTTP/1.1 names it in Host, HTTP/2 in :authority (the URI).
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).or(authority);
            match host {
                Some(h) if !h.is_empty() => format!("https://{h}"),
                _ => return false,
            }
        }
    };
    origin.eq_ignore_ascii_case(&expected)
}

/// The origin the console is configured at (`[web] origin`), for [`origin_guard`].
#[derive(Clone, Debug)]
pub struct OriginPolicy(pub Option<String>);

pub async fn origin_guard(State(policy): State<OriginPolicy>, request: Request, next: Next) -> Response {
    let authority = request.uri().authority().map(|a| a.as_str().to_string());
    if origin_allowed(request.method(), request.headers(), authority.as_deref(), policy.0.as_deref()) {
        return next.run(request).await;
    }
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
    tracing::warn!(
        method = %request.method(),
        path = %request.uri().path(),
        origin = header("origin"),
        sec_fetch_site = header("sec-fetch-site"),
        "cross-site request refused"
    );
    crate::pages::cross_site_refused()
}

/// The CSRF token a form carried against the session's, in constant time.
pub fn csrf_matches(expected: &str, given: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// Token and flow values otpd makes are URL-safe text; anything else is
/// refused rather than put in a header (a `;` would add cookie attributes).
pub fn is_cookie_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 512
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~+/=".contains(&b))
}

/// `Set-Cookie` for a console cookie: only over HTTPS, never to scripts,
/// never on a cross-site request, for the whole console and this host only
/// (the `__Host-` prefix makes the browser insist on all of that).
pub fn cookie(name: &str, value: &str) -> Option<HeaderValue> {
    if !is_cookie_value(value) {
        return None;
    }
    HeaderValue::from_str(&format!("{name}={value}; Secure; HttpOnly; SameSite=Strict; Path=/")).ok()
}

/// `Set-Cookie` that makes the browser forget a console cookie.
pub fn clear_cookie(name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("{name}=; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The value of cookie `name` in the request, if it has one that could be ours.
pub fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| is_cookie_value(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn every_response_gets_the_security_headers() {
        let mut h = HeaderMap::new();
        apply_headers(&mut h);
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        assert_eq!(
            get("content-security-policy"),
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        );
        assert_eq!(get("strict-transport-security"), "max-age=31536000");
        assert_eq!(get("x-content-type-options"), "nosniff");
        assert_eq!(get("referrer-policy"), "same-origin");
        assert_eq!(get("x-frame-options"), "DENY");
        assert_eq!(get("cache-control"), "no-store");
        // A static file's own caching is kept.
        let mut h = headers(&[("cache-control", "public, max-age=3600")]);
        apply_headers(&mut h);
        assert_eq!(h.get("cache-control").map(|v| v.as_bytes()), Some(&b"public, max-age=3600"[..]));
    }

    #[test]
    fn origin_must_match_the_host_or_the_configured_origin() {
        let post = Method::POST;
        let same = headers(&[("host", "otp.example.org:8443"), ("origin", "https://otp.example.org:8443")]);
        assert!(origin_allowed(&post, &same, None, None));
        let other = headers(&[("host", "otp.example.org"), ("origin", "https://evil.example")]);
        assert!(!origin_allowed(&post, &other, None, None));
        let http = headers(&[("host", "otp.example.org"), ("origin", "http://otp.example.org")]);
        assert!(!origin_allowed(&post, &http, None, None), "plain http is another origin");
        let missing = headers(&[("host", "otp.example.org")]);
        assert!(!origin_allowed(&post, &missing, None, None));
        let null = headers(&[("host", "otp.example.org"), ("origin", "null")]);
        assert!(!origin_allowed(&post, &null, None, None));
        // "null" (a no-referrer policy) from this origin, as the browser vouches.
        let ours = headers(&[("host", "otp.example.org"), ("origin", "null"), ("sec-fetch-site", "same-origin")]);
        assert!(origin_allowed(&post, &ours, None, None));
        for site in ["cross-site", "same-site", "none"] {
            let mut h = headers(&[("host", "otp.example.org"), ("origin", "null")]);
            h.insert("sec-fetch-site", HeaderValue::from_static(site));
            assert!(!origin_allowed(&post, &h, None, None), "{site}");
        }
        // Sec-Fetch-Site never stands in for a real, different Origin.
        let evil = headers(&[
            ("host", "otp.example.org"),
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(!origin_allowed(&post, &evil, None, None));
        // HTTP/2: the host is the URI's authority.
        let h2 = headers(&[("origin", "https://otp.example.org")]);
        assert!(origin_allowed(&post, &h2, Some("otp.example.org"), None));
        assert!(!origin_allowed(&post, &h2, None, None), "no host at all");
        // Configured: the Host header no longer decides.
        let proxied = headers(&[("host", "127.0.0.1:8443"), ("origin", "https://127.0.0.1:8443")]);
        assert!(!origin_allowed(&post, &proxied, None, Some("https://otp.example.org")));
        let right = headers(&[("host", "127.0.0.1:8443"), ("origin", "https://otp.example.org")]);
        assert!(origin_allowed(&post, &right, None, Some("https://otp.example.org")));
        // Reading is always allowed.
        assert!(origin_allowed(&Method::GET, &missing, None, None));
    }

    #[test]
    fn csrf_compare() {
        assert!(csrf_matches("abc123", "abc123"));
        assert!(!csrf_matches("abc123", "abc124"));
        assert!(!csrf_matches("abc123", "abc12"));
        assert!(!csrf_matches("abc123", ""));
        assert!(!csrf_matches("", ""), "an empty token never matches");
    }

    #[test]
    fn cookies_are_host_only_secure_httponly_strict() {
        let c = cookie(SESSION_COOKIE, "tok_EN-1").and_then(|v| v.to_str().ok().map(str::to_string));
        assert_eq!(c.as_deref(), Some("__Host-otpweb=tok_EN-1; Secure; HttpOnly; SameSite=Strict; Path=/"));
        let c = c.unwrap_or_default();
        assert!(!c.to_ascii_lowercase().contains("domain"));
        let cleared = clear_cookie(FLOW_COOKIE);
        let cleared = cleared.to_str().unwrap_or_default();
        assert!(cleared.starts_with("__Host-otpweb-flow=;") && cleared.contains("Max-Age=0"));
        assert!(cleared.contains("Secure") && cleared.contains("HttpOnly") && cleared.contains("SameSite=Strict"));
        // A value that would add attributes or headers is refused.
        assert!(cookie(SESSION_COOKIE, "x; Domain=evil").is_none());
        assert!(cookie(SESSION_COOKIE, "x\r\nSet-Cookie: y").is_none());
        assert!(cookie(SESSION_COOKIE, "").is_none());
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let h = headers(&[("cookie", "__Host-otpweb-flow=F1; __Host-otpweb=S1"), ("cookie", "other=x")]);
        assert_eq!(read_cookie(&h, SESSION_COOKIE).as_deref(), Some("S1"));
        assert_eq!(read_cookie(&h, FLOW_COOKIE).as_deref(), Some("F1"));
        assert_eq!(read_cookie(&h, "otpweb"), None);
        let bad = headers(&[("cookie", "__Host-otpweb=a\"b")]);
        assert_eq!(read_cookie(&bad, SESSION_COOKIE), None);
    }
}
