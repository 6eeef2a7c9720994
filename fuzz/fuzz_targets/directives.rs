//! Fuzzes the upstream's directives (SPEC §3): a parsed `X-Upgate-Register` holds only valid
//! values and renders back to itself, and `take` strips every `X-Upgate-*` field whatever it holds.
//!
//! Input: lines; the first is parsed as a register value, and every line becomes a response header.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use upgate::config::FORMAT_NAMES;
use upgate::proxy::directives::{MAX_TOKEN, register, take, token};

fn check_token(t: &str) {
    assert!(!t.is_empty() && t.len() <= MAX_TOKEN, "token {t:?}");
    assert!(t.bytes().all(|b| b.is_ascii_graphic()), "token {t:?}");
}

fn check_register(value: &str) {
    let Ok(r) = register(value) else {
        return;
    };
    check_token(&r.token);
    if let Some(accept) = &r.limits.accept {
        assert!(!accept.is_empty());
        for (i, name) in accept.iter().enumerate() {
            assert!(FORMAT_NAMES.contains(&name.as_str()), "format {name:?}");
            assert!(!accept[..i].contains(name), "{name:?} twice");
        }
    }
    assert_ne!(r.limits.max_bytes, Some(0));
    assert_ne!(r.limits.max_files, Some(0));
    let rendered = r.to_string();
    assert_eq!(
        register(&rendered).as_ref(),
        Ok(&r),
        "{value:?} -> {rendered:?}"
    );
}

/// Every line as a header: the names cycle through the directives and a bystander.
fn headers(lines: &[&[u8]]) -> HeaderMap {
    const NAMES: [&str; 4] = [
        "x-upgate-register",
        "x-upgate-revoke",
        "x-upgate-other",
        "content-type",
    ];
    let mut map = HeaderMap::new();
    for (i, line) in lines.iter().enumerate() {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            map.append(HeaderName::from_static(NAMES[i % NAMES.len()]), v);
        }
    }
    map
}

fn check_take(lines: &[&[u8]]) {
    let mut map = headers(lines);
    let bystanders: Vec<HeaderValue> = map.get_all("content-type").iter().cloned().collect();
    let found = take(&mut map);
    assert!(
        map.keys().all(|k| !k.as_str().starts_with("x-upgate-")),
        "left {map:?}"
    );
    let kept: Vec<&HeaderValue> = map.get_all("content-type").iter().collect();
    assert_eq!(
        kept,
        bystanders.iter().collect::<Vec<_>>(),
        "other fields untouched"
    );
    if let Ok(found) = found {
        found.revoke.iter().for_each(|t| check_token(t));
        if let Some(r) = found.register {
            check_token(&r.token);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let first = text.split('\n').next().unwrap_or_default();
    check_register(first);
    if let Ok(t) = token(first) {
        check_token(&t);
    }
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').take(16).collect();
    check_take(&lines);
});
