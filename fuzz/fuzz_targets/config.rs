//! Fuzzes config loading (SPEC §1): parsing and validating never panic, every error is one line
//! naming a key, and the effective config that `upgate check` prints reads back to itself.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use upgate::config::{Config, ConfigError, parse_file};

/// Every key the validation may name (SPEC §1), with `intercept[N]` written `intercept`.
const KEYS: &[&str] = &[
    "server.listen",
    "server.tls_listen",
    "server.tls_cert",
    "server.tls_key",
    "server.header_timeout",
    "server.idle_timeout",
    "server.shutdown_grace",
    "server.trusted_proxies",
    "upstream.url",
    "upstream.connect_timeout",
    "upstream.response_timeout",
    "secret.file",
    "identity.from",
    "identity.issue_cookie",
    "storage.root",
    "uploads.route",
    "uploads.accept",
    "uploads.max_file_bytes",
    "uploads.max_session_bytes",
    "uploads.max_session_files",
    "uploads.handle_ttl",
    "uploads.retention",
    "uploads.intercept_retention",
    "files.route",
    "files.max_url_ttl",
    "files.media_root",
    "files.media_route",
    "files.public_prefix",
    "intercept.path",
    "intercept.accept",
    "intercept.max_file_bytes",
    "intercept.rewrite",
    "slots.route",
    "slots.rewrite",
    "control.listen",
    "cors.allow_origins",
];

/// `intercept[3].path` -> `intercept.path`.
fn without_indexes(key: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in key.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// "stops start-up with one line naming the key and the problem".
fn check_error(e: &ConfigError) {
    assert!(!e.key.is_empty(), "no key: {e}");
    let line = e.to_string();
    // No line break, and no other control character that a terminal or a log reader would
    // act on (the key may come from the file: an unknown key is named as written).
    assert!(
        !line.chars().any(char::is_control),
        "not one plain line: {line:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // read_to_string refuses it before parsing
    };
    let raw = match parse_file(text) {
        Ok(raw) => raw,
        Err(e) => return check_error(&e),
    };
    let printed = toml::to_string(&raw).expect("the effective config prints");
    let again = parse_file(&printed).unwrap_or_else(|e| panic!("{printed:?} reads back: {e}"));
    assert_eq!(
        toml::to_string(&again).expect("prints"),
        printed,
        "print, read, print"
    );
    match Config::from_file(raw, Path::new("/etc/upgate")) {
        Ok(_) => assert!(Config::from_file(again, Path::new("/etc/upgate")).is_ok()),
        Err(e) => {
            check_error(&e);
            let key = without_indexes(&e.key);
            assert!(KEYS.contains(&key.as_str()), "unknown key {:?}", e.key);
        }
    }
});
