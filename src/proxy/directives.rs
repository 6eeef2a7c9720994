//! The upstream's response directives (SPEC §3), parsed and removed before the client sees the response. Pure.

use http::HeaderMap;
use http::header::HeaderName;

use crate::files::paths;

/// nginx's header: serve this internal path in place of the body.
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
    let accel = take(headers, &X_ACCEL_REDIRECT);
    let sendfile = take(headers, &X_SENDFILE);
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
fn take(headers: &mut HeaderMap, name: &HeaderName) -> Vec<http::HeaderValue> {
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
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
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
