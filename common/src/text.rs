//! Text hygiene shared by the module (before showing daemon text) and the
//! daemon (before storing user-supplied strings in the audit log).

/// Removes terminal control sequences and invisible direction overrides:
/// C0 controls except `\n` and `\t`, DEL, C1 controls (which include the
/// 8-bit CSI), and Unicode bidi overrides/isolates that can make text read
/// differently from what it is. Caps the result at `max_chars` characters.
pub fn sanitize_display(s: &str, max_chars: usize) -> String {
    s.chars().filter(|&c| c == '\n' || c == '\t' || !is_dangerous(c)).take(max_chars).collect()
}

/// Like [`sanitize_display`] but also drops newlines: for single-line
/// fields (service, rhost, tty) that end up in logs and tables.
pub fn sanitize_field(s: &str, max_chars: usize) -> String {
    s.chars().filter(|&c| !is_dangerous(c) && c != '\n' && c != '\t').take(max_chars).collect()
}

fn is_dangerous(c: char) -> bool {
    c.is_control() // C0, DEL and C1 (U+0080..U+009F)
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_escape_sequences() {
        let evil = "ok\x1b]0;pwned\x07\x1b[2J\u{9b}31m\r\u{202E}txt.exe\nnext\tcol";
        let clean = sanitize_display(evil, 1000);
        assert!(!clean.chars().any(|c| c == '\x1b' || c == '\x07' || c == '\r' || c == '\u{9b}' || c == '\u{202E}'));
        assert!(clean.contains("\nnext\tcol"));
        assert_eq!(sanitize_field("a\nb\x00c", 10), "abc");
    }

    #[test]
    fn keeps_qr_blocks_and_caps_length() {
        assert_eq!(sanitize_display("█▀▄ ", 10), "█▀▄ ");
        assert_eq!(sanitize_display("abcdef", 3), "abc");
    }
}
