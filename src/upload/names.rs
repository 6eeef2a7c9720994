//! Reducing a client-supplied file name to a safe base name (SPEC §5).

/// The longest name kept, in bytes: the usual limit of one path component.
pub const MAX_NAME_BYTES: usize = 255;

/// Longest extension (without its dot) that truncation keeps intact; a longer
/// "extension" is just the tail of a long name and is cut like the rest.
const MAX_KEPT_EXTENSION: usize = 32;

/// Reduces `raw` to a base name that is safe to store, list and put in a
/// header, or `None` when nothing safe remains (the caller answers
/// `bad_request`).
///
/// Steps, each closing one way a name can lie or escape:
/// 1. only the last component after `/` or `\` is kept, so no path
///    traversal survives (`../../etc/passwd` gives `passwd`);
/// 2. control characters (C0, DEL, C1), bidi controls and invisible format
///    characters are dropped, so the shown name is the real one
///    (`invoice\u{202E}fdp.exe` cannot pose as `invoiceexe.pdf`);
/// 3. leading and trailing whitespace and dots are trimmed: no hidden
///    dot-files, no `.`/`..`, no trailing dot that Windows would drop;
/// 4. the name is cut to [`MAX_NAME_BYTES`] bytes on a char boundary,
///    keeping the extension so the format check still sees it.
///
/// Anything else, unicode letters included, is kept as sent. The result is a
/// fixed point: `sanitize(&sanitize(x)?) == sanitize(x)`.
pub fn sanitize(raw: &str) -> Option<String> {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let visible: String = base.chars().filter(|&c| !is_hidden_or_control(c)).collect();
    let name = fit(trim(&visible));
    (!name.is_empty()).then_some(name)
}

/// The text after the last `.`, or `None` when there is no dot, nothing
/// after it, or the only dot starts the name (`.bashrc` has no extension).
pub fn extension(name: &str) -> Option<&str> {
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty() && !ext.is_empty()).then_some(ext)
}

/// Characters that are invisible or reorder text, so a name holding them
/// does not read as what it is: controls, bidi marks and overrides, zero
/// width characters, the BOM, line separators, interlinear annotation and
/// tag characters (used to smuggle hidden ASCII).
fn is_hidden_or_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

fn trim(name: &str) -> &str {
    name.trim_matches(|c: char| c.is_whitespace() || c == '.')
}

/// Cuts a trimmed name to [`MAX_NAME_BYTES`], shortening the stem rather
/// than the extension.
fn fit(name: &str) -> String {
    if name.len() <= MAX_NAME_BYTES {
        return name.to_owned();
    }
    match extension(name).filter(|ext| ext.len() <= MAX_KEPT_EXTENSION) {
        Some(ext) => {
            let stem = &name[..name.len() - ext.len() - 1];
            let stem = &stem[..floor_char_boundary(stem, MAX_NAME_BYTES - ext.len() - 1)];
            format!("{stem}.{ext}")
        }
        // The cut may leave a trailing dot or space: trim again so a second
        // pass finds nothing to change.
        None => trim(&name[..floor_char_boundary(name, MAX_NAME_BYTES)]).to_owned(),
    }
}

/// The largest char boundary of `s` at or below `max` (`str::floor_char_boundary`
/// is newer than the crate's MSRV).
fn floor_char_boundary(s: &str, max: usize) -> usize {
    (0..=max.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::XorShift;

    fn clean(raw: &str) -> Option<String> {
        sanitize(raw)
    }

    #[test]
    fn keeps_ordinary_names() {
        assert_eq!(clean("report.pdf").as_deref(), Some("report.pdf"));
        assert_eq!(
            clean("Résumé 2024.docx").as_deref(),
            Some("Résumé 2024.docx")
        );
        assert_eq!(
            clean("日本語のファイル.txt").as_deref(),
            Some("日本語のファイル.txt")
        );
        assert_eq!(clean("a..b.csv").as_deref(), Some("a..b.csv"));
        assert_eq!(clean("😀 photo.png").as_deref(), Some("😀 photo.png"));
    }

    #[test]
    fn keeps_only_the_last_path_component() {
        assert_eq!(clean("../../etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(clean("C:\\x\\y.pdf").as_deref(), Some("y.pdf"));
        assert_eq!(clean("..\\..\\boot.ini").as_deref(), Some("boot.ini"));
        assert_eq!(clean("/abs/path/a.txt").as_deref(), Some("a.txt"));
        assert_eq!(clean("mixed/..\\../x.png").as_deref(), Some("x.png"));
        assert_eq!(clean("dir/"), None);
        assert_eq!(clean("dir\\"), None);
    }

    #[test]
    fn drops_controls_and_bidi() {
        assert_eq!(clean("report\0.pdf").as_deref(), Some("report.pdf"));
        assert_eq!(
            clean("a\u{7f}b\u{85}c\u{9b}.txt").as_deref(),
            Some("abc.txt")
        );
        assert_eq!(clean("line\r\nbreak.txt").as_deref(), Some("linebreak.txt"));
        assert_eq!(
            clean("invoice\u{202E}fdp.exe").as_deref(),
            Some("invoicefdp.exe")
        );
        for bidi in [
            '\u{202A}', '\u{202D}', '\u{2066}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
        ] {
            assert_eq!(clean(&format!("a{bidi}b.pdf")).as_deref(), Some("ab.pdf"));
        }
        assert_eq!(
            clean("\u{FEFF}a\u{200B}\u{200D}b.pdf").as_deref(),
            Some("ab.pdf")
        );
        assert_eq!(clean("a\u{E0041}\u{E0042}.pdf").as_deref(), Some("a.pdf"));
        assert_eq!(clean("a\u{2028}b.pdf").as_deref(), Some("ab.pdf"));
    }

    #[test]
    fn trims_whitespace_and_dots() {
        assert_eq!(clean("  spaced.txt  ").as_deref(), Some("spaced.txt"));
        assert_eq!(clean("name.pdf.").as_deref(), Some("name.pdf"));
        assert_eq!(clean("name.pdf . .").as_deref(), Some("name.pdf"));
        assert_eq!(clean(".bashrc").as_deref(), Some("bashrc"));
        assert_eq!(clean("..hidden.txt").as_deref(), Some("hidden.txt"));
        assert_eq!(
            clean("\u{3000}\u{a0}wide.txt\t").as_deref(),
            Some("wide.txt")
        );
    }

    #[test]
    fn nothing_safe_left_is_none() {
        for raw in [
            "",
            ".",
            "..",
            "...",
            " . ",
            " ",
            "/",
            "\\",
            "../..",
            "\0",
            "\u{202E}",
            ". \u{200B} .",
        ] {
            assert_eq!(clean(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn truncates_keeping_the_extension() {
        let long = format!("{}.pdf", "a".repeat(1000));
        let name = clean(&long).expect("a name remains");
        assert_eq!(name.len(), MAX_NAME_BYTES);
        assert!(name.ends_with("aaa.pdf"));
    }

    #[test]
    fn truncates_on_a_char_boundary() {
        // 'é' is two bytes, so 251 bytes of stem cannot be filled exactly.
        let long = format!("{}.pdf", "é".repeat(300));
        let name = clean(&long).expect("a name remains");
        assert!(name.len() <= MAX_NAME_BYTES);
        assert_eq!(name.len(), 250 + 4);
        assert!(name.ends_with("é.pdf"));
    }

    #[test]
    fn a_long_extension_is_cut_like_the_rest() {
        let long = format!("x.{}", "b".repeat(400));
        let name = clean(&long).expect("a name remains");
        assert_eq!(name.len(), MAX_NAME_BYTES);
        assert!(name.starts_with("x.bbb"));
    }

    #[test]
    fn truncation_never_leaves_a_trailing_dot() {
        let long = format!("{}{}", "a".repeat(254), ".".repeat(10)) + &"c".repeat(40);
        let name = clean(&long).expect("a name remains");
        assert_eq!(name, "a".repeat(254));
    }

    #[test]
    fn extension_cases() {
        assert_eq!(extension("a.pdf"), Some("pdf"));
        assert_eq!(extension("archive.tar.gz"), Some("gz"));
        assert_eq!(extension("README"), None);
        assert_eq!(extension(".bashrc"), None);
        assert_eq!(extension("file."), None);
        assert_eq!(extension(""), None);
        assert_eq!(extension("..x"), Some("x"));
        assert_eq!(extension("a.PDF"), Some("PDF"));
    }

    const HOSTILE: &[&str] = &[
        "/",
        "\\",
        "..",
        ".",
        " ",
        "\0",
        "\u{7f}",
        "\u{85}",
        "\u{9f}",
        "\t",
        "\n",
        "\r",
        "\u{202E}",
        "\u{202A}",
        "\u{2066}",
        "\u{2069}",
        "\u{200E}",
        "\u{200F}",
        "\u{061C}",
        "\u{200B}",
        "\u{200D}",
        "\u{FEFF}",
        "\u{2028}",
        "\u{E0041}",
        "\u{3000}",
        "\u{a0}",
        "a",
        "Z",
        "é",
        "日本",
        "😀",
        ".pdf",
        ".txt",
        "C:",
        "%2e",
        "x",
        "é.é",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "ééééééééééééééééééééééééééééééé",
        "😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀",
    ];

    fn hostile_string(rng: &mut XorShift) -> String {
        rng.string(HOSTILE, 59)
    }

    fn assert_safe(raw: &str, name: &str) {
        assert!(!name.is_empty(), "{raw:?}");
        assert!(name.len() <= MAX_NAME_BYTES, "{raw:?}");
        assert!(!name.contains(['/', '\\', '\0']), "{raw:?} -> {name:?}");
        assert!(
            !name.chars().any(is_hidden_or_control),
            "{raw:?} -> {name:?}"
        );
        assert!(
            !name.starts_with('.') && !name.ends_with('.'),
            "{raw:?} -> {name:?}"
        );
        assert_eq!(name.trim(), name, "{raw:?}");
        assert_eq!(
            sanitize(name).as_deref(),
            Some(name),
            "not idempotent: {raw:?}"
        );
    }

    #[test]
    fn hostile_strings_keep_the_invariants() {
        let mut rng = XorShift::new(0x9E37_79B9_7F4A_7C15);
        let mut kept = 0;
        for _ in 0..20_000 {
            let raw = hostile_string(&mut rng);
            if let Some(name) = sanitize(&raw) {
                assert_safe(&raw, &name);
                kept += 1;
            }
        }
        // The generator must exercise both outcomes to prove anything.
        assert!(kept > 1_000 && kept < 20_000, "kept {kept}");
    }

    #[test]
    fn hostile_strings_hit_the_length_limit() {
        let mut rng = XorShift::new(42);
        let long = (0..2_000).find_map(|_| {
            let raw: String = (0..4).map(|_| hostile_string(&mut rng)).collect();
            sanitize(&raw).filter(|name| name.len() > 240)
        });
        let name = long.expect("some generated name is long");
        assert_safe(&name, &name);
    }
}
