//! QR codes as text: two modules per character cell using the Unicode half
//! blocks, like `qrencode -t UTF8`. Light modules are drawn as blocks so the
//! code reads correctly on the usual dark terminal background, with the
//! quiet zone included.
use qrcode::render::unicode::Dense1x2;
use qrcode::{EcLevel, QrCode};

pub fn render(data: &str) -> Option<String> {
    let code = QrCode::with_error_correction_level(data.as_bytes(), EcLevel::L).ok()?;
    Some(code.render::<Dense1x2>().dark_color(Dense1x2::Light).light_color(Dense1x2::Dark).quiet_zone(true).build())
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_blocks_only() {
        let s = super::render("otpauth://totp/x:y?secret=AAAA").unwrap_or_default();
        assert!(s.lines().count() > 10);
        assert!(s.chars().all(|c| matches!(c, ' ' | '\n' | '\u{2580}' | '\u{2584}' | '\u{2588}')));
    }
}
