//! What the templates are given: the layout's parts, the shared result
//! page, and times as people read them.
use super::Nav;
use askama::Template;
use common::proto::AdminResponse;
use common::web::FlowLine;

/// The layout's title and navigation.
pub struct Page {
    pub title: String,
    pub nav: Nav,
}

impl Page {
    pub fn new(title: impl Into<String>, nav: Nav) -> Page {
        Page { title: title.into(), nav }
    }
}

/// One line of text, shown as an error or not.
#[derive(Debug, Clone)]
pub struct Line {
    pub error: bool,
    pub text: String,
}

impl Line {
    pub fn info(text: impl Into<String>) -> Line {
        Line { error: false, text: text.into() }
    }

    pub fn error(text: impl Into<String>) -> Line {
        Line { error: true, text: text.into() }
    }
}

impl From<FlowLine> for Line {
    fn from(l: FlowLine) -> Line {
        Line { error: l.error, text: l.text }
    }
}

/// An enrollment to show: the QR code and, as text, the URI it holds.
pub struct Qr {
    /// SVG made by [`crate::qr::svg`] from the code's modules only.
    pub svg: Option<String>,
    pub uri: String,
}

impl Qr {
    pub fn of(uri: String) -> Qr {
        Qr { svg: crate::qr::svg(&uri), uri }
    }
}

pub struct Link {
    pub href: String,
    pub text: String,
}

/// The page for results, outcomes and refusals: lines, and what is shown
/// only once (recovery codes, an enrollment's QR code).
#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    pub page: Page,
    pub lines: Vec<Line>,
    pub codes: Vec<String>,
    pub qr: Option<Qr>,
    pub next: Option<Link>,
}

impl MessagePage {
    pub fn new(title: impl Into<String>, nav: Nav) -> MessagePage {
        MessagePage { page: Page::new(title, nav), lines: Vec::new(), codes: Vec::new(), qr: None, next: None }
    }

    pub fn line(mut self, line: Line) -> MessagePage {
        self.lines.push(line);
        self
    }

    pub fn lines(mut self, lines: impl IntoIterator<Item = Line>) -> MessagePage {
        self.lines.extend(lines);
        self
    }

    pub fn codes(mut self, codes: Vec<String>) -> MessagePage {
        self.codes = codes;
        self
    }

    pub fn qr(mut self, qr: Option<Qr>) -> MessagePage {
        self.qr = qr;
        self
    }

    pub fn next(mut self, href: impl Into<String>, text: impl Into<String>) -> MessagePage {
        self.next = Some(Link { href: href.into(), text: text.into() });
        self
    }
}

/// What an admin action did, as a page: its message, and what is shown
/// only once (a new enrollment's QR code, new recovery codes).
pub fn outcome_page(nav: Nav, title: &str, response: AdminResponse, back: (&str, &str)) -> MessagePage {
    let page = MessagePage::new(title, nav);
    let page = match response {
        AdminResponse::Done { message } => page.line(Line::info(message)),
        AdminResponse::User { user } => page.line(Line::info(format!(
            "{}: {}, method {}, activated {}, locked {}.",
            user.name,
            if user.enabled { "enabled" } else { "disabled" },
            user.method,
            truth(user.activated),
            yes_no(user.locked)
        ))),
        AdminResponse::Enrolled { user, otpauth_uri } => page
            .line(Line::info(format!(
                "{} is enabled for {} codes; the enrollment is pending until the first good code.",
                user.name, user.method
            )))
            .qr(otpauth_uri.map(Qr::of)),
        AdminResponse::RecoveryCodes { user, codes } => {
            page.line(Line::info(format!("New recovery codes for {user}; any older set no longer works."))).codes(codes)
        }
        _ => page.line(Line::info("Done.")),
    };
    page.next(back.0, back.1)
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn when(t: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(t) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        Err(_) => t.to_string(),
    }
}

/// [`when`], or `none` when there is no time.
pub fn when_or(t: Option<i64>, none: &str) -> String {
    t.map(when).unwrap_or_else(|| none.to_string())
}

/// A time typed in a filter (UTC): `YYYY-MM-DD`, `YYYY-MM-DD HH:MM[:SS]`
/// (or with `T`, as a browser's datetime field sends it), or Unix seconds.
/// Empty is no time.
pub fn parse_when(text: &str) -> Result<Option<i64>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(Some(secs));
    }
    let bad = || format!("{text:?} is not a time: write YYYY-MM-DD or YYYY-MM-DD HH:MM (UTC)");
    let (date, clock) = match text.split_once([' ', 'T']) {
        Some((d, c)) => (d, c),
        None => (text, "00:00"),
    };
    let num = |s: Option<&str>| s.and_then(|s| s.parse::<u32>().ok());
    let mut d = date.split('-');
    let (Some(y), Some(m), Some(day), None) = (num(d.next()), num(d.next()), num(d.next()), d.next()) else {
        return Err(bad());
    };
    let mut c = clock.split(':');
    let (Some(h), Some(min)) = (num(c.next()), num(c.next())) else { return Err(bad()) };
    let s = match c.next() {
        Some(s) => num(Some(s)).ok_or_else(bad)?,
        None => 0,
    };
    if c.next().is_some() {
        return Err(bad());
    }
    let month = u8::try_from(m).ok().and_then(|m| time::Month::try_from(m).ok()).ok_or_else(bad)?;
    let year = i32::try_from(y).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(year, month, u8::try_from(day).map_err(|_| bad())?).map_err(|_| bad())?;
    let small = |v: u32| u8::try_from(v).map_err(|_| bad());
    let clock = time::Time::from_hms(small(h)?, small(min)?, small(s)?).map_err(|_| bad())?;
    Ok(Some(time::PrimitiveDateTime::new(date, clock).assume_utc().unix_timestamp()))
}

/// "True"/"False", as the brief of the users table has it.
pub fn truth(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// A query string (`?a=b&c=d`) of the non-empty pairs, URL-encoded.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let pairs: Vec<(&str, &str)> = pairs.iter().copied().filter(|(_, v)| !v.is_empty()).collect();
    match serde_urlencoded::to_string(pairs) {
        Ok(q) if !q.is_empty() => format!("?{q}"),
        _ => String::new(),
    }
}

/// A path segment, percent-encoded (a user or host name in a URL).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_utc() {
        assert_eq!(when(0), "1970-01-01 00:00:00");
        assert_eq!(when(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(when_or(None, "never"), "never");
        assert_eq!(parse_when(""), Ok(None));
        assert_eq!(parse_when("2023-11-14 22:13:20"), Ok(Some(1_700_000_000)));
        assert_eq!(parse_when("2023-11-14T22:13"), Ok(Some(1_700_000_000 - 20)));
        assert_eq!(parse_when("2023-11-14"), Ok(Some(1_699_920_000)));
        assert_eq!(parse_when("1700000000"), Ok(Some(1_700_000_000)));
        for bad in ["yesterday", "2023-13-01", "2023-02-30", "2023-11-14 25:00", "2023-11-14 10:00:00:00", "2023-11"] {
            assert!(parse_when(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_encoded() {
        assert_eq!(segment("<img src=x>"), "%3Cimg%20src%3Dx%3E");
        assert_eq!(segment("alice.b-c_d"), "alice.b-c_d");
        assert_eq!(query(&[("q", "a&b"), ("after", "")]), "?q=a%26b");
        assert_eq!(query(&[("q", "")]), "");
    }
}
