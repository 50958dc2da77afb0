//! The enrollment QR code as inline SVG. The markup is made from the QR
//! modules only (rectangles in one path); the URI itself never enters it,
//! so nothing from otpd can become markup here.
use qrcode::render::svg;
use qrcode::QrCode;

/// What a screen reader says for the picture; the page shows the URI as text too.
const LABEL: &str = "QR code of the enrollment link, for an authenticator app";

/// `None` when the text is too long for a QR code.
pub fn svg(text: &str) -> Option<String> {
    let code = QrCode::new(text.as_bytes()).ok()?;
    let image = code
        .render::<svg::Color<'_>>()
        .min_dimensions(232, 232)
        .dark_color(svg::Color("#000"))
        .light_color(svg::Color("#fff"))
        .build();
    // An XML declaration has no place inside an HTML document.
    let start = image.find("<svg ")?;
    let body = image.get(start + "<svg ".len()..)?;
    Some(format!(r#"<svg class="qr" role="img" aria-label="{LABEL}" {body}"#))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_svg_is_only_svg_markup_from_the_modules() {
        let uri = "otpauth://totp/host:%3Cscript%3E?secret=JBSWY3DPEHPK3PXP&issuer=<b>x</b>\"'";
        let svg = svg(uri).unwrap_or_default();
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>"), "{svg}");
        assert!(!svg.contains("otpauth") && !svg.contains("JBSWY3DP") && !svg.contains("script"));
        assert!(!svg.contains("<?xml"));
        // Tags: only svg, rect, path.
        let tags: Vec<&str> = svg
            .split('<')
            .skip(1)
            .map(|t| t.trim_start_matches('/').split([' ', '>', '/']).next().unwrap_or(""))
            .collect();
        assert!(tags.iter().all(|t| ["svg", "rect", "path"].contains(t)), "{tags:?}");
        // Attribute values are numbers, path commands, colours and our constant label.
        let allowed = |c: char| c.is_ascii_alphanumeric() || " =\"#:/.,-_()<>".contains(c);
        assert!(svg.chars().all(allowed), "unexpected character in {svg}");
    }

    #[test]
    fn text_too_long_for_a_qr_code_gives_none() {
        assert!(svg(&"x".repeat(5000)).is_none());
    }
}
