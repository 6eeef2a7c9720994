//! Fuzzes `upload::names::sanitize`: whatever a client sends, the kept name is a safe base name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upgate::upload::names::{MAX_NAME_BYTES, sanitize};

/// Unicode's bidi controls (UAX #9 explicit formatting characters and marks), listed here
/// from the standard rather than taken from the code under test.
fn is_bidi(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// True when every char of `name` appears in `raw` in the same order: sanitising only removes.
fn is_subsequence(name: &str, raw: &str) -> bool {
    let mut rest = raw.chars();
    name.chars().all(|c| rest.any(|r| r == c))
}

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    let Some(name) = sanitize(&raw) else {
        return;
    };
    assert!(!name.is_empty());
    assert!(name.len() <= MAX_NAME_BYTES, "{} bytes", name.len());
    assert!(!name.contains(['/', '\\']), "separator in {name:?}");
    assert!(name != "." && name != "..", "{name:?}");
    assert!(!name.starts_with('.') && !name.ends_with('.'), "{name:?}");
    assert!(
        !name.chars().any(char::is_control),
        "control char in {name:?}"
    );
    assert!(!name.chars().any(is_bidi), "bidi char in {name:?}");
    assert_eq!(name.trim(), name, "outer whitespace");
    assert!(
        is_subsequence(&name, &raw),
        "{name:?} invents chars of {raw:?}"
    );
    assert_eq!(
        sanitize(&name).as_deref(),
        Some(name.as_str()),
        "not idempotent"
    );
});
