//! QR codes as text, in the style the module asked for (`qr=` option).
//!
//! Light modules are drawn (blocks or `#`) and dark ones left blank, so the
//! code reads correctly on the usual dark terminal background; the quiet
//! zone is included (drawn light). `Utf8` puts two modules in one character
//! cell with the Unicode half blocks, like `qrencode -t UTF8`. `Ascii` is
//! for terminals that cannot show those (an ssh client in the C/POSIX
//! locale prints them as octal escapes, a serial console as garbage): one
//! module per row and two characters per module, which keeps the code
//! square because a character cell is about twice as tall as it is wide.
use common::proto::QrStyle;
use qrcode::render::unicode::Dense1x2;
use qrcode::{EcLevel, QrCode};

pub fn render(data: &str, style: QrStyle) -> Option<String> {
    if style == QrStyle::Off {
        return None;
    }
    let code = QrCode::with_error_correction_level(data.as_bytes(), EcLevel::L).ok()?;
    Some(match style {
        QrStyle::Ascii => {
            code.render::<char>().dark_color(' ').light_color('#').module_dimensions(2, 1).quiet_zone(true).build()
        }
        _ => code.render::<Dense1x2>().dark_color(Dense1x2::Light).light_color(Dense1x2::Dark).quiet_zone(true).build(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "otpauth://totp/x:y?secret=AAAA";

    #[test]
    fn renders_blocks_only() {
        let s = render(URI, QrStyle::Utf8).unwrap_or_default();
        assert!(s.lines().count() > 10);
        assert!(s.chars().all(|c| matches!(c, ' ' | '\n' | '\u{2580}' | '\u{2584}' | '\u{2588}')));
    }

    #[test]
    fn ascii_is_square_hashes_and_spaces_with_a_quiet_zone() {
        let s = render(URI, QrStyle::Ascii).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines.len() > 20, "{s}");
        assert!(s.chars().all(|c| matches!(c, ' ' | '#' | '\n')), "{s}");
        for l in &lines {
            assert_eq!(l.len(), 2 * lines.len(), "two characters per module, one line per module row");
        }
        // Four light modules of quiet zone around the code.
        assert!(lines[..4].iter().all(|l| l.chars().all(|c| c == '#')));
        assert!(lines.iter().all(|l| l.starts_with("########") && l.ends_with("########")));
    }

    /// The README promises 50-60 columns for utf8 and twice that for ascii
    /// (this long host name gives 57 and 114).
    #[test]
    fn typical_enrollment_widths() {
        let uri = "otpauth://totp/build-server-07.example.org:alice.smith?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP\
                   &digits=6&algorithm=SHA1&issuer=build-server-07.example.org&period=30";
        let width = |style| render(uri, style).unwrap_or_default().lines().map(|l| l.chars().count()).max();
        let (utf8, ascii) = (width(QrStyle::Utf8).unwrap_or(0), width(QrStyle::Ascii).unwrap_or(0));
        assert_eq!(ascii, 2 * utf8);
        assert!((50..=60).contains(&utf8), "utf8 {utf8} columns");
    }

    #[test]
    fn off_draws_nothing() {
        assert_eq!(render(URI, QrStyle::Off), None);
    }
}
