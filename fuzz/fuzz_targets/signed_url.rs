//! Fuzzes signed URLs (SPEC §7): a URL signed from the input verifies, and no single change of its
//! bytes or its method ever does (a GET signature admitting HEAD is the one allowed change).
//!
//! Input: `METHOD\nPATH\nPARAMS\n<mutation bytes>`, each line reduced to what a request can carry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upgate::signing::Secret;

const KEY: &[u8] = b"fuzz-secret-0123456789abcdef-0123";
const NOW: u64 = 1_790_000_000;
const TTL: u64 = 3600;

/// RFC 9110 `tchar`: what a method may be made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Bytes a request-target may hold (visible ASCII; no fragment).
fn is_target_byte(b: u8) -> bool {
    b.is_ascii_graphic() && b != b'#'
}

fn method(line: &[u8]) -> String {
    let m: String = line
        .iter()
        .copied()
        .filter(|&b| is_tchar(b))
        .map(char::from)
        .collect();
    if m.is_empty() { "GET".into() } else { m }
}

fn path(line: &[u8]) -> String {
    let p: String = line
        .iter()
        .copied()
        .filter(|&b| is_target_byte(b) && b != b'?')
        .map(char::from)
        .collect();
    if p.starts_with('/') {
        p
    } else {
        format!("/{p}")
    }
}

/// Form-decodes a key as a reader of the query would (`+` is a space, `%XX` a byte).
fn form_key(piece: &str) -> String {
    let key = piece
        .split_once('=')
        .map_or(piece, |(k, _)| k)
        .replace('+', " ");
    percent_encoding::percent_decode_str(&key)
        .decode_utf8_lossy()
        .into_owned()
}

/// The caller's parameters, minus any that would be `expires` or `sig` once decoded: the signer
/// adds those itself (`sign_url`'s contract).
fn params(line: &[u8]) -> String {
    let raw: String = line
        .iter()
        .copied()
        .filter(|&b| is_target_byte(b))
        .map(char::from)
        .collect();
    raw.split('&')
        .filter(|piece| !matches!(form_key(piece).as_str(), "expires" | "sig"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Takes bytes off the front of the mutation description, zero when it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *first
    }

    fn index(&mut self, len: usize) -> usize {
        let n = usize::from(self.byte()) << 8 | usize::from(self.byte());
        if len == 0 { 0 } else { n % len }
    }

    fn target_byte(&mut self) -> u8 {
        let b = self.byte() % 94 + 0x21;
        if b == b'#' { b'%' } else { b }
    }
}

/// One change of the URL or the method, chosen by `m`.
fn mutate(method: &str, url: &str, m: &mut Bytes) -> (String, Vec<u8>) {
    let mut url = url.as_bytes().to_vec();
    let mut method = method.to_owned();
    let len = url.len();
    match m.byte() % 8 {
        0 => url[m.index(len)] = m.target_byte(),
        1 => url.insert(m.index(len + 1), m.target_byte()),
        2 => drop(url.remove(m.index(len))),
        3 => url.truncate(m.index(len)),
        4 => url.swap(m.index(len), m.index(len)),
        5 => {
            let (from, to) = (m.index(len), m.index(len));
            let piece = url[from.min(to)..from.max(to)].to_vec();
            let at = m.index(len + 1);
            url.splice(at..at, piece);
        }
        6 => {
            let extra = [b'&', m.target_byte(), b'=', m.target_byte()];
            let at = m.index(len + 1);
            url.splice(at..at, extra);
        }
        _ => {
            let others = [
                "GET", "HEAD", "POST", "PUT", "DELETE", "get", "GET ", "OPTIONS",
            ];
            method = others[usize::from(m.byte()) % others.len()]
                .trim()
                .to_owned();
            if m.byte() % 2 == 1 {
                method.push(char::from(m.target_byte()));
            }
        }
    }
    (method, url)
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.splitn(4, |&b| b == b'\n');
    let mut line = || lines.next().unwrap_or_default();
    let (method, path, params) = (method(line()), path(line()), params(line()));
    let mut m = Bytes(line());
    let secret = Secret::new(KEY);
    let expires = NOW + u64::from(m.byte()) * 10;
    let url = secret.sign_url(&method, &path, &params, expires);

    let (p, q) = url.split_once('?').expect("a signed URL has a query");
    let verified = secret.verify_url(&method, p, Some(q), NOW, TTL);
    let verified = verified.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    assert_eq!(verified.expires, expires);
    if method == "GET" {
        assert!(
            secret.verify_url("HEAD", p, Some(q), NOW, TTL).is_ok(),
            "GET admits HEAD"
        );
    }

    let (method2, url2) = mutate(&method, &url, &mut m);
    if method2 == method && url2 == url.as_bytes() {
        return; // not a change
    }
    if method == "GET" && method2 == "HEAD" && url2 == url.as_bytes() {
        return; // the one change the contract admits
    }
    let url2 = String::from_utf8(url2).expect("ASCII in, ASCII out");
    let (p2, q2) = match url2.split_once('?') {
        Some((p2, q2)) => (p2, Some(q2)),
        None => (url2.as_str(), None),
    };
    let forged = secret.verify_url(&method2, p2, q2, NOW, TTL);
    assert!(
        forged.is_err(),
        "modified URL accepted: {method} {url} -> {method2} {url2}"
    );
});
