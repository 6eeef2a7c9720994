//! Minting signed URLs (SPEC §7) for `upgate sign` and `POST /v1/sign`: one function, so both mint the same URL.

use std::fmt::Write as _;
use std::time::Duration;

use percent_encoding::percent_decode_str;

use crate::signing::Secret;

/// A signed path-absolute URL for `path`, valid for `ttl` from `now` (unix seconds).
///
/// `path` is the path as it will be requested and may carry a `?query` (already
/// percent-encoded, e.g. the `cb=` of a slot); `expires` and `sig` are appended. The
/// signature covers the path exactly as sent, so the path is first put in the form every
/// client sends unchanged: an existing `%XX` is kept, and every byte outside RFC 3986 `pchar`
/// and `/` is percent-encoded (`/media/a b.pdf` becomes `/media/a%20b.pdf`). The method is
/// upper-cased (`get` means `GET`).
///
/// # Errors
///
/// A sentence for the user: the path does not start with `/`, the query is not encoded or
/// already has `expires` or `sig`, the method is not a token, or `ttl` is zero or longer
/// than `max_ttl` (the gateway would refuse such a URL).
pub fn sign_path(
    secret: &Secret,
    method: &str,
    path: &str,
    ttl: Duration,
    max_ttl: Duration,
    now: u64,
) -> Result<String, String> {
    let method = method.trim().to_ascii_uppercase();
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(format!("method {method:?} is not an HTTP method"));
    }
    if ttl.as_secs() == 0 {
        return Err("ttl must be at least 1s".into());
    }
    if ttl > max_ttl {
        return Err(format!(
            "ttl {}s is longer than files.max_url_ttl ({}s); the gateway would refuse the URL",
            ttl.as_secs(),
            max_ttl.as_secs()
        ));
    }
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with /"));
    }
    check_query(query)?;
    let expires = now.saturating_add(ttl.as_secs());
    Ok(secret.sign_url(&method, &encode_path(path), query, expires))
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A query given with the path must be sent as it is: visible ASCII, no fragment, and not
/// the parameters the signer adds.
fn check_query(query: &str) -> Result<(), String> {
    if !query.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        return Err("the query must be percent-encoded (visible ASCII, no #)".into());
    }
    let taken = query.split('&').find_map(|piece| {
        let key = piece.split_once('=').map_or(piece, |(k, _)| k);
        let key = percent_decode_str(key).decode_utf8_lossy();
        matches!(key.as_ref(), "expires" | "sig").then(|| key.into_owned())
    });
    match taken {
        Some(key) => Err(format!(
            "the query must not have {key:?}: the signer adds it"
        )),
        None => Ok(()),
    }
}

/// RFC 3986 `pchar` (unreserved, sub-delims, `:`, `@`) and `/`: what clients send unchanged.
fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b)
}

/// Percent-encodes what a request line may not carry as it is; keeps an existing `%XX`.
fn encode_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    for (i, &b) in bytes.iter().enumerate() {
        let escape = b == b'%'
            && bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        if is_path_char(b) || escape {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn secret() -> Secret {
        Secret::new(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn signs_as_the_gateway_verifies() {
        let s = secret();
        let url = sign_path(&s, "get", "/media/a b/é%41.pdf", HOUR, HOUR, 1000).unwrap();
        let (path, query) = url.split_once('?').unwrap();
        assert_eq!(path, "/media/a%20b/%C3%A9%41.pdf");
        assert!(query.starts_with("expires=4600&sig="));
        let q = s.verify_url("GET", path, Some(query), 1000, 3600).unwrap();
        assert_eq!(q.expires, 4600);
        assert!(s.verify_url("HEAD", path, Some(query), 1000, 3600).is_ok());
        assert!(s.verify_url("POST", path, Some(query), 1000, 3600).is_err());
    }

    #[test]
    fn the_fixed_vector() {
        let url = sign_path(
            &secret(),
            "GET",
            "/files/0b6e2f5e-7c1a-4c1b-9d1e-3f2a1b0c9d8e/a.pdf",
            Duration::from_secs(1000),
            HOUR,
            1_789_999_000,
        )
        .unwrap();
        assert!(
            url.ends_with("?expires=1790000000&sig=zIveauQiLx15RQDXwITmA5bx-RGIRudMPnH_uYLs4GQ")
        );
    }

    #[test]
    fn a_query_goes_before_expires() {
        let s = secret();
        let url = sign_path(&s, "POST", "/slots?cb=%2Fdocs", HOUR, HOUR, 0).unwrap();
        let (path, query) = url.split_once('?').unwrap();
        assert_eq!(path, "/slots");
        assert!(query.starts_with("cb=%2Fdocs&expires=3600&sig="));
        let q = s.verify_url("POST", path, Some(query), 0, 3600).unwrap();
        assert_eq!(q.get("cb"), Some("/docs"));
    }

    #[test]
    fn path_encoding() {
        assert_eq!(
            encode_path("/a-z_0.9~!$&'()*+,;=:@"),
            "/a-z_0.9~!$&'()*+,;=:@"
        );
        assert_eq!(
            encode_path("/a b\"<>`{}|^\\#[]"),
            "/a%20b%22%3C%3E%60%7B%7D%7C%5E%5C%23%5B%5D"
        );
        assert_eq!(encode_path("/100%.pdf"), "/100%25.pdf");
        assert_eq!(encode_path("/100%25.pdf"), "/100%25.pdf");
        assert_eq!(encode_path("/%4"), "/%254");
        assert_eq!(encode_path("/ü"), "/%C3%BC");
        assert_eq!(encode_path("/\u{0}"), "/%00");
    }

    #[test]
    fn refusals() {
        let s = secret();
        let sign = |m: &str, p: &str, ttl: u64| {
            sign_path(&s, m, p, Duration::from_secs(ttl), HOUR, 0).unwrap_err()
        };
        assert!(sign("GET", "media/a", 60).contains("start with /"));
        assert!(sign("GET", "/a", 3601).contains("max_url_ttl"));
        assert!(sign("GET", "/a", 0).contains("at least"));
        assert!(sign("G T", "/a", 60).contains("method"));
        assert!(sign("", "/a", 60).contains("method"));
        assert!(sign("GET", "/a?expires=1", 60).contains("expires"));
        assert!(sign("GET", "/a?x=1&%73ig=2", 60).contains("sig"));
        assert!(sign("GET", "/a?x=a b", 60).contains("percent-encoded"));
        assert!(sign_path(&s, "GET", "/a", HOUR, HOUR, 0).is_ok());
    }
}
