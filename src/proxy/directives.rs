//! Upstream response directives (SPEC §3), parsed, validated and removed before the client sees the response:
//! `X-Upgate-Register`, `X-Upgate-Revoke`, `X-Accel-Redirect` and `X-Sendfile`. Pure.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{FORMAT_NAMES, parse_size};
use crate::db::Limits;
use crate::files::paths;

pub const X_UPGATE_REGISTER: HeaderName = HeaderName::from_static("x-upgate-register");
pub const X_UPGATE_REVOKE: HeaderName = HeaderName::from_static("x-upgate-revoke");

/// The longest session token accepted, in bytes.
pub const MAX_TOKEN: usize = 256;

/// A parsed `X-Upgate-Register`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    pub token: String,
    pub limits: Limits,
}

/// The canonical header value: `<token>[; accept=a,b][; max-bytes=N][; max-files=N]`, sizes in
/// plain bytes. [`register`] reads it back to the same value (the fuzz target and a property test
/// hold it to that).
impl fmt::Display for Register {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.token)?;
        if let Some(accept) = &self.limits.accept {
            write!(f, "; accept={}", accept.join(","))?;
        }
        if let Some(n) = self.limits.max_bytes {
            write!(f, "; max-bytes={n}")?;
        }
        if let Some(n) = self.limits.max_files {
            write!(f, "; max-files={n}")?;
        }
        Ok(())
    }
}

/// A session token: 1..=256 bytes of visible ASCII (SPEC §3).
pub fn token(raw: &str) -> Result<String, String> {
    let t = raw.trim_matches([' ', '\t']);
    if t.is_empty() {
        return Err("empty token".into());
    }
    if t.len() > MAX_TOKEN {
        return Err(format!("token of {} bytes (at most {MAX_TOKEN})", t.len()));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("token has characters other than visible ASCII".into());
    }
    Ok(t.to_string())
}

/// Parses `<token>[; accept=pdf,png][; max-bytes=10MiB][; max-files=20]`.
pub fn register(value: &str) -> Result<Register, String> {
    let mut parts = value.split(';');
    let token = token(parts.next().unwrap_or(""))?;
    let mut limits = Limits::default();
    for param in parts {
        let (key, val) = param
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| format!("parameter {:?} is not key=value", param.trim()))?;
        match key.to_ascii_lowercase().as_str() {
            "accept" if limits.accept.is_none() => limits.accept = Some(accept(val)?),
            "max-bytes" if limits.max_bytes.is_none() => {
                limits.max_bytes = Some(
                    parse_size(val)
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("max-bytes {val:?} is not a size"))?,
                )
            }
            "max-files" if limits.max_files.is_none() => {
                limits.max_files = Some(
                    val.parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("max-files {val:?} is not a positive number"))?,
                )
            }
            "accept" | "max-bytes" | "max-files" => {
                return Err(format!("parameter {key} given twice"));
            }
            _ => return Err(format!("unknown parameter {key:?}")),
        }
    }
    Ok(Register { token, limits })
}

/// The directives of one upstream response, removed from its headers.
#[derive(Debug, Default)]
pub struct Found {
    pub revoke: Vec<String>,
    pub register: Option<Register>,
}

/// Takes every `X-Upgate-*` field out of a response (none reaches the client) and parses the directives.
/// At most one registration per response.
pub fn take(headers: &mut HeaderMap) -> Result<Found, String> {
    let text = |v: &HeaderValue| {
        v.to_str()
            .map(str::to_string)
            .map_err(|_| "directive is not ASCII".to_string())
    };
    let revoke = headers
        .get_all(X_UPGATE_REVOKE)
        .iter()
        .map(|v| token(&text(v)?))
        .collect::<Result<Vec<_>, _>>();
    let registers = headers
        .get_all(X_UPGATE_REGISTER)
        .iter()
        .map(|v| register(&text(v)?))
        .collect::<Result<Vec<_>, _>>();
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-upgate-"))
        .cloned()
        .collect();
    for name in ours {
        headers.remove(name);
    }
    let mut registers = registers?;
    if registers.len() > 1 {
        return Err("more than one X-Upgate-Register in a response".into());
    }
    Ok(Found {
        revoke: revoke?,
        register: registers.pop(),
    })
}

pub fn accept(list: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim) {
        let lower = match name.to_ascii_lowercase().as_str() {
            "jpg" => "jpeg".to_string(),
            other => other.to_string(),
        };
        if !FORMAT_NAMES.contains(&lower.as_str()) {
            return Err(format!("accept names an unknown format {name:?}"));
        }
        if !out.contains(&lower) {
            out.push(lower);
        }
    }
    Ok(out)
}

/// Whether a response carries a header [`take`] or [`take_accel`] acts on. One pass over its
/// names: most responses carry none, and looking each directive up costs more.
pub fn present(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| {
        let k = k.as_str();
        k.starts_with("x-upgate-") || k == X_ACCEL_REDIRECT || k == X_SENDFILE
    })
}

pub const X_ACCEL_REDIRECT: HeaderName = HeaderName::from_static("x-accel-redirect");
/// Apache's and lighttpd's name for the same directive; here it takes the same paths.
pub const X_SENDFILE: HeaderName = HeaderName::from_static("x-sendfile");

/// The file an `X-Accel-Redirect` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccelTarget {
    /// `/files/<id>[/<name>]`: a stored file; the name, when given, percent-decoded.
    File { id: String, name: Option<String> },
    /// `/media/<path>`: a file of `media_root`, as [`paths::media_relative`] returns it.
    Media(String),
}

/// Removes `X-Accel-Redirect` and `X-Sendfile` from an upstream response and parses the
/// directive, if there was one. `X-Accel-Redirect` wins when both are present, as nginx
/// never reads `X-Sendfile`.
///
/// # Errors
///
/// A sentence for the log (the client gets `502 bad_upstream_directive`): the header is
/// repeated, not visible ASCII, or names no file upgate serves; see [`accel_target`].
pub fn take_accel(
    headers: &mut HeaderMap,
    files_route: &str,
    media_route: &str,
) -> Result<Option<AccelTarget>, String> {
    let accel = take_all(headers, &X_ACCEL_REDIRECT);
    let sendfile = take_all(headers, &X_SENDFILE);
    let (name, values) = if accel.is_empty() {
        (X_SENDFILE, sendfile)
    } else {
        (X_ACCEL_REDIRECT, accel)
    };
    match values.as_slice() {
        [] => Ok(None),
        [value] => {
            let value = value
                .to_str()
                .map_err(|_| format!("{name}: not visible ASCII"))?;
            accel_target(value, files_route, media_route)
                .map(Some)
                .map_err(|e| format!("{name}: {e}"))
        }
        _ => Err(format!("{name}: given {} times", values.len())),
    }
}

/// Every value of a header, which is then gone from the map.
fn take_all(headers: &mut HeaderMap, name: &HeaderName) -> Vec<http::HeaderValue> {
    let values = headers.get_all(name).iter().cloned().collect();
    headers.remove(name);
    values
}

/// Parses an `X-Accel-Redirect` value: a path under `files_route` (`/files/<id>[/<name>]`)
/// or `media_route` (`/media/<path>`), percent-encoded as nginx expects it. A `?query` is
/// ignored, as nginx's static handler ignores it. A media path obeys the same rules as a
/// request's ([`paths::media_relative`]): a directive is never a way out of `media_root`.
///
/// # Errors
///
/// A sentence naming the problem: not a path, not under either route, a malformed id or
/// name, or a media path that could leave the root.
pub fn accel_target(
    value: &str,
    files_route: &str,
    media_route: &str,
) -> Result<AccelTarget, String> {
    let value = value.trim();
    let path = value.split_once('?').map_or(value, |(p, _)| p);
    if let Some(rest) = paths::route_rest(path, files_route) {
        let (id, name) = paths::stored_file(rest)
            .ok_or_else(|| format!("{value:?} is not {files_route}/<id>[/<name>]"))?;
        return Ok(AccelTarget::File {
            id: id.to_owned(),
            name,
        });
    }
    if let Some(rest) = paths::route_rest(path, media_route) {
        return paths::media_relative(rest)
            .map(AccelTarget::Media)
            .map_err(|e| format!("{value:?}: {}", e.detail));
    }
    Err(format!(
        "{value:?} is under neither {files_route} nor {media_route}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `present` sees every header `take` and `take_accel` act on, and only those.
    #[test]
    fn present_sees_every_directive() {
        let with = |name: &str| {
            let mut h = HeaderMap::new();
            h.insert("content-type", HeaderValue::from_static("text/plain"));
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_static("x"),
            );
            h
        };
        for name in [
            "x-upgate-register",
            "x-upgate-revoke",
            "X-Upgate-Anything",
            "x-accel-redirect",
            "X-Sendfile",
        ] {
            assert!(present(&with(name)), "{name}");
        }
        for name in [
            "x-upgate",
            "x-accel-redirects",
            "x-sendfile2",
            "x-upload-session",
        ] {
            assert!(!present(&with(name)), "{name}");
        }
        assert!(!present(&HeaderMap::new()));
    }

    #[test]
    fn register_with_parameters() {
        let r = register("sess-123; accept=pdf, PNG,jpg; max-bytes=10MiB; max-files=20")
            .expect("valid");
        assert_eq!(r.token, "sess-123");
        assert_eq!(
            r.limits.accept,
            Some(vec!["pdf".into(), "png".into(), "jpeg".into()])
        );
        assert_eq!(r.limits.max_bytes, Some(10 << 20));
        assert_eq!(r.limits.max_files, Some(20));
        assert_eq!(register("t").expect("bare").limits, Limits::default());
    }

    #[test]
    fn take_removes_every_upgate_field() {
        let mut h = HeaderMap::new();
        h.append("x-upgate-revoke", HeaderValue::from_static("old1"));
        h.append("x-upgate-revoke", HeaderValue::from_static("old2"));
        h.append(
            "x-upgate-register",
            HeaderValue::from_static("new; max-files=2"),
        );
        h.append("x-upgate-other", HeaderValue::from_static("x"));
        h.append("content-type", HeaderValue::from_static("text/html"));
        let found = take(&mut h).expect("valid");
        assert_eq!(found.revoke, ["old1", "old2"]);
        assert_eq!(found.register.expect("register").limits.max_files, Some(2));
        assert_eq!(h.len(), 1);
        let mut h = HeaderMap::new();
        h.append("x-upgate-register", HeaderValue::from_static("a"));
        h.append("x-upgate-register", HeaderValue::from_static("b"));
        assert!(take(&mut h).is_err());
        assert!(h.is_empty(), "removed even when refused");
    }

    #[test]
    fn malformed_registers_are_refused() {
        for bad in [
            "",
            " ; accept=pdf",
            "a b",
            "tök",
            &"x".repeat(257),
            "t; accept=exe",
            "t; max-bytes=lots",
            "t; max-bytes=0",
            "t; max-files=-1",
            "t; max-files=0",
            "t; colour=blue",
            "t; accept",
            "t; max-files=1; max-files=2",
        ] {
            assert!(register(bad).is_err(), "{bad:?}");
        }
        assert!(register(&"x".repeat(256)).is_ok());
    }

    #[test]
    fn display_is_the_canonical_spelling() {
        let r = register("sess-123;ACCEPT = pdf, PNG,jpg ; max-bytes=10MiB; max-files=+20")
            .expect("valid");
        assert_eq!(
            r.to_string(),
            "sess-123; accept=pdf,png,jpeg; max-bytes=10485760; max-files=20"
        );
        assert_eq!(register("t").expect("bare").to_string(), "t");
    }

    /// Random register values, valid and not: whatever parses renders back to itself.
    #[test]
    fn property_a_parsed_register_round_trips() {
        const TOKEN: &[&str] = &["s", "-", "=", ",", "x9", "~", " ", "\t", "é", "\\"];
        const PARAMS: &[&str] = &[
            "; accept=pdf",
            "; accept = PNG, jpg,pdf",
            "; accept=zip,zip",
            "; accept=exe",
            "; accept=",
            "; max-bytes=10MiB",
            "; MAX-BYTES= 1 KiB ",
            "; max-bytes=0",
            "; max-bytes=18446744073709551615",
            "; max-files=20",
            "; max-files=+3",
            "; max-files=-1",
            "; colour=blue",
            ";",
            "; max-files",
        ];
        let mut rng = crate::testing::XorShift::new(0xD1EC_7173);
        let mut parsed = 0;
        for _ in 0..20_000 {
            let value = rng.string(TOKEN, 4) + &rng.string(PARAMS, 3);
            let Ok(r) = register(&value) else { continue };
            parsed += 1;
            assert!(token(&r.token).is_ok(), "{value:?}");
            assert_eq!(register(&r.to_string()), Ok(r), "{value:?}");
        }
        assert!(parsed > 2_000, "only {parsed} values parsed");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod accel_tests {
    use http::HeaderValue;

    use super::*;

    const ID: &str = "0b6e2f5e-7c1a-4c1b-9d1e-3f2a1b0c9d8e";

    fn target(v: &str) -> Result<AccelTarget, String> {
        accel_target(v, "/files", "/media")
    }

    #[test]
    fn files_and_media_targets() {
        assert_eq!(
            target(&format!("/files/{ID}/a%20b.pdf")),
            Ok(AccelTarget::File {
                id: ID.into(),
                name: Some("a b.pdf".into())
            })
        );
        assert_eq!(
            target(&format!("/files/{ID}")),
            Ok(AccelTarget::File {
                id: ID.into(),
                name: None
            })
        );
        assert_eq!(
            target("/media/invoices/42.pdf"),
            Ok(AccelTarget::Media("invoices/42.pdf".into()))
        );
        assert_eq!(
            target(" /media/a%C3%A9.pdf?x=1 "),
            Ok(AccelTarget::Media("aé.pdf".into()))
        );
    }

    #[test]
    fn everything_else_is_refused() {
        for bad in [
            "",
            "media/a.pdf",
            "/etc/passwd",
            "/mediax/a.pdf",
            "/filesystem/a",
            "/files",
            "/files/",
            "/files/../etc/passwd",
            "/files/not-an-id!/a.pdf",
            "/media",
            "/media/",
            "/media/../etc/passwd",
            "/media/%2e%2e/etc/passwd",
            "/media/a%2fb",
            "/media/a\\b",
            "/media/a%00",
            "http://evil.example/media/a.pdf",
        ] {
            assert!(target(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn take_removes_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(X_SENDFILE, HeaderValue::from_static("/media/b.pdf"));
        h.insert(X_ACCEL_REDIRECT, HeaderValue::from_static("/media/a.pdf"));
        h.insert("content-type", HeaderValue::from_static("application/pdf"));
        assert_eq!(
            take_accel(&mut h, "/files", "/media"),
            Ok(Some(AccelTarget::Media("a.pdf".into())))
        );
        assert_eq!(h.len(), 1);

        h.insert(X_SENDFILE, HeaderValue::from_static("/media/b.pdf"));
        assert_eq!(
            take_accel(&mut h, "/files", "/media"),
            Ok(Some(AccelTarget::Media("b.pdf".into())))
        );
        assert_eq!(take_accel(&mut h, "/files", "/media"), Ok(None));
    }

    #[test]
    fn take_refuses_repeats_and_garbage() {
        let mut h = HeaderMap::new();
        h.append(X_ACCEL_REDIRECT, HeaderValue::from_static("/media/a.pdf"));
        h.append(X_ACCEL_REDIRECT, HeaderValue::from_static("/media/b.pdf"));
        assert!(take_accel(&mut h, "/files", "/media").is_err());
        assert!(h.is_empty(), "a refused directive is removed all the same");

        h.insert(
            X_ACCEL_REDIRECT,
            HeaderValue::from_bytes(b"/media/\xff").unwrap(),
        );
        assert!(take_accel(&mut h, "/files", "/media").is_err());
        h.insert(X_SENDFILE, HeaderValue::from_static("/var/www/a.pdf"));
        assert!(take_accel(&mut h, "/files", "/media").is_err());
    }
}
