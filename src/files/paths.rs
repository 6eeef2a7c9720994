//! Request paths to what they name: the route a path falls under, a media file, a stored file's name. Pure, no I/O.
//!
//! A media path is decoded once and then judged by its segments, never by string tricks on
//! the raw form: whatever spelling reaches `..`, a separator or a NUL is refused before the
//! file system sees it. Symlinks are the caller's to check, since only the disk knows them.

use percent_encoding::percent_decode_str;

use crate::error::{Error, Kind, Result};

/// The part of `path` after `route` when `path` is the route or below it: `/files` owns
/// `/files` and `/files/...`, never `/filesystem`. The rest is `""` or starts with `/`.
pub fn route_rest<'a>(path: &'a str, route: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(route)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// The file a media request names, relative to `media_root`, as `a/b/c.pdf`.
///
/// `raw` is what follows the media route in the request path, still percent-encoded. It is
/// decoded exactly once (so `%252e` stays the name `%2e`). Refused with `bad_request`: an
/// encoded `/` or `\` (`%2F`, `%5C`: a segment must not hide a separator), a decoded `\`, NUL
/// or other control character, invalid UTF-8, and `.` or `..` segments. Empty segments
/// collapse, as nginx's `merge_slashes` does. A path naming a folder (empty, or ending in
/// `/`) is `not_found`: there are no listings.
///
/// # Errors
///
/// As above; the detail says which rule the path broke.
pub fn media_relative(raw: &str) -> Result<String> {
    let bad = |why: &str| Err(Error::new(Kind::BadRequest, format!("media path: {why}")));
    let encoded_slash = raw.as_bytes().windows(3).any(|w| {
        w[0] == b'%' && (w[1..].eq_ignore_ascii_case(b"2f") || w[1..].eq_ignore_ascii_case(b"5c"))
    });
    if encoded_slash {
        return bad("an encoded slash or backslash");
    }
    let Ok(decoded) = percent_decode_str(raw).decode_utf8() else {
        return bad("not UTF-8");
    };
    if decoded.contains('\\') || decoded.chars().any(char::is_control) {
        return bad("a backslash, NUL or control character");
    }
    if decoded.split('/').any(|s| s == "." || s == "..") {
        return bad("a . or .. segment");
    }
    if decoded.split('/').all(str::is_empty) || decoded.ends_with('/') {
        return Err(Error::new(
            Kind::NotFound,
            "no such file (folders are not listed)",
        ));
    }
    // Empty segments (`a//b`, the leading `/`) are dropped. Past its leading `/`, a path has
    // none as a rule, and is copied as it is (every media request comes here).
    let relative = decoded.strip_prefix('/').unwrap_or(&decoded);
    if relative.split('/').any(str::is_empty) {
        let segments: Vec<&str> = relative.split('/').filter(|s| !s.is_empty()).collect();
        return Ok(segments.join("/"));
    }
    Ok(relative.to_owned())
}

/// Whether `relative` (from [`media_relative`]) lies in the public folder. The prefix is a
/// folder, `"public"` and `"public/"` alike, so `publicity/x` is not under `public`; an empty
/// prefix makes every media file public.
pub fn is_public(relative: &str, prefix: &str) -> bool {
    let folder = prefix.trim_end_matches('/');
    folder.is_empty()
        || relative
            .strip_prefix(folder)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A stored file's `<id>/<name>` (what follows `/files/`): the id as it is and the name
/// percent-decoded; the name is optional (`X-Accel-Redirect: /files/<id>`). `None` when the
/// id is not made of the characters of a UUID or the name is not UTF-8: no such file.
pub fn stored_file(rest: &str) -> Option<(&str, Option<String>)> {
    let rest = rest.strip_prefix('/')?;
    let (id, name) = match rest.split_once('/') {
        Some((id, name)) => (id, Some(name)),
        None => (rest, None),
    };
    let id_ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if !id_ok {
        return None;
    }
    let name = match name {
        Some(n) => Some(percent_decode_str(n).decode_utf8().ok()?.into_owned()),
        None => None,
    };
    Some((id, name))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn route_owns_itself_and_below_only() {
        assert_eq!(route_rest("/files", "/files"), Some(""));
        assert_eq!(route_rest("/files/", "/files"), Some("/"));
        assert_eq!(route_rest("/files/a/b", "/files"), Some("/a/b"));
        assert_eq!(route_rest("/filesystem", "/files"), None);
        assert_eq!(route_rest("/file", "/files"), None);
        assert_eq!(route_rest("/x/files/a", "/files"), None);
    }

    #[test]
    fn media_paths_that_resolve() {
        let ok = |raw: &str| media_relative(raw).unwrap();
        assert_eq!(ok("/a.pdf"), "a.pdf");
        assert_eq!(ok("a.pdf"), "a.pdf");
        assert_eq!(ok("/a/b/c.pdf"), "a/b/c.pdf");
        assert_eq!(ok("/a//b"), "a/b");
        assert_eq!(ok("/invoices/42.pdf"), "invoices/42.pdf");
        assert_eq!(ok("//invoices///42.pdf"), "invoices/42.pdf");
        assert_eq!(ok("/my%20file%C3%A9.pdf"), "my fileé.pdf");
        assert_eq!(ok("/%252e%252e/x"), "%2e%2e/x", "decoded once only");
        assert_eq!(
            ok("/..a/b..c/...d"),
            "..a/b..c/...d",
            "dots inside names are names"
        );
        assert_eq!(ok("/.well-known/x"), ".well-known/x");
    }

    #[test]
    fn media_paths_that_could_leave_the_root() {
        for raw in [
            "/..",
            "/../etc/passwd",
            "/a/../../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E/etc/passwd",
            "/.%2e/x",
            "/..%2f..%2fetc/passwd",
            "/..%2F..%2Fetc/passwd",
            "/a%2fb",
            "/a%5cb",
            "/..\\..\\etc\\passwd",
            "/a\\b",
            "/a%00.png",
            "/a%0a.png",
            "/a\u{7f}",
            "/%c0%ae%c0%ae/etc/passwd",
            "/%ff",
            "/./a",
            "/a/.",
        ] {
            let e = media_relative(raw).unwrap_err();
            assert_eq!(e.kind, Kind::BadRequest, "{raw:?}");
        }
    }

    #[test]
    fn media_folders_are_not_found() {
        for raw in ["", "/", "//", "/invoices/"] {
            assert_eq!(
                media_relative(raw).unwrap_err().kind,
                Kind::NotFound,
                "{raw:?}"
            );
        }
    }

    #[test]
    fn public_prefix_is_a_folder() {
        assert!(is_public("public/a.png", "public/"));
        assert!(is_public("public/a/b.png", "public"));
        assert!(!is_public("publicity/a.png", "public"));
        assert!(!is_public("public", "public/"));
        assert!(!is_public("private/public/a.png", "public/"));
        assert!(is_public("assets/img/a.png", "assets/img/"));
        assert!(!is_public("assets/a.png", "assets/img/"));
        assert!(is_public("anything.pdf", ""));
    }

    #[test]
    fn stored_file_parts() {
        let id = "0b6e2f5e-7c1a-4c1b-9d1e-3f2a1b0c9d8e";
        assert_eq!(
            stored_file(&format!("/{id}/a%20b.pdf")),
            Some((id, Some("a b.pdf".to_string())))
        );
        assert_eq!(stored_file(&format!("/{id}")), Some((id, None)));
        assert_eq!(
            stored_file(&format!("/{id}/")),
            Some((id, Some(String::new())))
        );
        assert_eq!(stored_file(""), None);
        assert_eq!(stored_file("/"), None);
        assert_eq!(stored_file("/../x"), None);
        assert_eq!(stored_file("/abc%2f/x"), None);
        assert_eq!(stored_file(&format!("/{id}/%ff")), None);
    }
}
