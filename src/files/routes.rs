//! The file routes of the public listener: `/files/<id>/<name>`, `/media/<path>`, and files named by `X-Accel-Redirect`.
//!
//! Signed URLs are checked first and in SPEC §7's order (`bad_signature`, `expired`,
//! `ttl_too_long`), before anything is looked up, so an unsigned request learns nothing of
//! which files exist.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode};

use super::{Serve, paths, serve_kept, serve_opened, serve_stored};
use crate::body::Body;
use crate::error::{Error, Kind, Result};
use crate::gateway::Gateway;
use crate::proxy::directives::AccelTarget;
use crate::proxy::unix_now;
use crate::signing::UrlError;

/// Stored files are sent as downloads: they are what users uploaded, and a download never
/// runs in the gateway's origin. `<img src>` and `<embed>` ignore the disposition, so
/// previews still work; an application that wants `inline` says so through `X-Accel-Redirect`.
const STORED_DISPOSITION: &str = "attachment";

/// The upstream response headers a file served by `X-Accel-Redirect` keeps (nginx keeps the
/// same, less those SPEC §3 names, which are applied separately).
const ACCEL_KEPT: [header::HeaderName; 4] = [
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::SET_COOKIE,
    // A handle registered by the same response (X-Upgate-Register) must reach the client too.
    crate::proxy::headers::X_UPLOAD_HANDLE,
];

/// `GET`/`HEAD /files/<id>/<name>?expires=…&sig=…`: an uploaded file, by a signed URL.
/// The name must be the file's (percent-decoded), so a URL cannot be re-labelled.
pub async fn files_route(gw: &Gateway, req: &Request<Body>, rest: &str) -> Result<Response<Body>> {
    verify(gw, req)?;
    let Some((id, Some(name))) = paths::stored_file(rest) else {
        return Err(Error::new(Kind::NotFound, "no such file"));
    };
    stored(gw, req.method(), req.headers(), id, Some(&name), None).await
}

/// `GET`/`HEAD /media/<path>`: a file of `media_root`; signed unless under `public_prefix`.
/// "Under" holds for the real path too: a symlink in the public folder to a private file
/// asks for a signature, as that file's own URL would.
pub async fn media_route(gw: &Gateway, req: &Request<Body>, rest: &str) -> Result<Response<Body>> {
    let prefix = &gw.config.files.public_prefix;
    // SPEC §7's order: the signature first, unless the path is (well-formed and) public.
    let relative = paths::media_relative(rest);
    let public = relative.as_ref().is_ok_and(|r| paths::is_public(r, prefix));
    if !public {
        verify(gw, req)?;
    }
    let relative = relative?;
    let root = media_root(gw)?;
    let content_type = media_type(&relative);
    let serve = |path| Serve {
        path,
        content_type,
        disposition: None,
        etag_extra: "",
    };
    // A small file read before from a path free of symlinks, which still names it unchanged.
    let direct = root.join(&relative);
    if let Some(kept) = super::kept(&direct, super::Check::NoSymlinks) {
        return serve_kept(req.method(), req.headers(), kept, serve(&direct)).await;
    }
    let media = open_media(root, &relative)?;
    if public
        && let Some((root, real)) = &media.followed
        && !real.starts_with(root.join(prefix))
    {
        verify(gw, req)?;
    }
    // Only a file opened as `root/relative` itself is kept under that path: one reached
    // through a symlink is checked anew each time.
    let keep = media.followed.is_none() && media.path == direct;
    serve_opened(
        req.method(),
        req.headers(),
        media.file,
        serve(&media.path),
        keep,
    )
    .await
}

/// Serves the file an upstream response named (`X-Accel-Redirect`, `X-Sendfile`) in place
/// of its body, which is dropped unread. No signature: the upstream is trusted, that is the
/// point. As nginx's internal redirect, any method but HEAD becomes GET. The upstream's
/// status is kept; only a `200` may still become `206`, `304` or `416` by the client's
/// `Range` and validators (`conditional`). The upstream's `Content-Type` (unless empty) and
/// `Content-Disposition` replace upgate's own, and `Cache-Control`, `Expires` and
/// `Set-Cookie` pass.
pub async fn accel(
    gw: &Gateway,
    method: &Method,
    conditional: &HeaderMap,
    upstream: Response<crate::proxy::UpstreamBody>,
    target: AccelTarget,
) -> Result<Response<Body>> {
    let (parts, _unread) = upstream.into_parts();
    let status = parts.status;
    if status.is_informational()
        || matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
        )
    {
        return Err(Error::new(
            Kind::BadUpstreamDirective,
            format!("X-Accel-Redirect on a {status} response, which cannot carry a file"),
        ));
    }
    let method = if method == Method::HEAD {
        Method::HEAD
    } else {
        Method::GET
    };
    let none = HeaderMap::new();
    let conditional = if status == StatusCode::OK {
        conditional
    } else {
        &none
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty());
    let mut res = match target {
        AccelTarget::File { id, name } => {
            stored(gw, &method, conditional, &id, name.as_deref(), content_type).await?
        }
        AccelTarget::Media(relative) => {
            accel_media(gw, &method, conditional, &relative, content_type).await?
        }
    };
    keep_upstream_headers(&mut res, status, &parts.headers);
    Ok(res)
}

async fn accel_media(
    gw: &Gateway,
    method: &Method,
    conditional: &HeaderMap,
    relative: &str,
    content_type: Option<&str>,
) -> Result<Response<Body>> {
    let root = gw.config.files.media_root.as_deref().ok_or_else(|| {
        Error::new(
            Kind::BadUpstreamDirective,
            "X-Accel-Redirect names a media file but files.media_root is not set",
        )
    })?;
    let media = open_media(root, relative)?;
    let guessed = media_type(relative);
    let file = Serve {
        path: &media.path,
        content_type: content_type.unwrap_or(guessed),
        disposition: None,
        etag_extra: "",
    };
    serve_opened(method, conditional, media.file, file, false).await
}

/// The upstream's status (when it was not 200), disposition and caching headers on a file answer.
fn keep_upstream_headers(res: &mut Response<Body>, status: StatusCode, upstream: &HeaderMap) {
    let carries_file = res.status().is_success();
    if status != StatusCode::OK {
        *res.status_mut() = status;
    }
    let h = res.headers_mut();
    if carries_file && let Some(v) = upstream.get(header::CONTENT_DISPOSITION) {
        h.insert(header::CONTENT_DISPOSITION, v.clone());
    }
    for name in ACCEL_KEPT {
        for v in upstream.get_all(&name) {
            h.append(name.clone(), v.clone());
        }
    }
}

/// A stored file by id: looked up in the index, its name checked when one is given.
async fn stored(
    gw: &Gateway,
    method: &Method,
    headers: &HeaderMap,
    id: &str,
    name: Option<&str>,
    content_type: Option<&str>,
) -> Result<Response<Body>> {
    let record = gw
        .store
        .db
        .file_shared(id)
        .map_err(|e| Error::internal("reading the file index", e))?
        .filter(|r| name.is_none_or(|n| n == r.name))
        .ok_or_else(|| Error::new(Kind::NotFound, "no such file"))?;
    // The blob is found by the record's id, never by the request's text.
    let path = gw.store.blob_path(&record.id);
    let file = Serve {
        path: &path,
        content_type: content_type.unwrap_or(&record.content_type),
        disposition: Some((STORED_DISPOSITION, &record.name)),
        etag_extra: &record.id,
    };
    serve_stored(method, headers, file).await
}

/// SPEC §7 on the request as it came: its method, raw path and raw query.
fn verify(gw: &Gateway, req: &Request<Body>) -> Result<()> {
    let uri = req.uri();
    let max_ttl = gw.config.files.max_url_ttl.as_secs();
    match gw.secret.verify_url_expiry(
        req.method().as_str(),
        uri.path(),
        uri.query(),
        unix_now(),
        max_ttl,
    ) {
        Ok(_) => Ok(()),
        Err(UrlError::BadSignature) => Err(Error::new(
            Kind::BadSignature,
            "the URL's signature is missing, malformed or wrong for this method, path and query",
        )),
        Err(UrlError::Expired) => Err(Error::new(Kind::Expired, "the signed URL has expired")),
        Err(UrlError::TtlTooLong) => Err(Error::new(
            Kind::TtlTooLong,
            format!("the URL expires more than {max_ttl}s from now (files.max_url_ttl)"),
        )),
    }
}

fn media_root(gw: &Gateway) -> Result<&Path> {
    // The gateway routes here only when media_root is set; this is the same check, not a second policy.
    gw.config
        .files
        .media_root
        .as_deref()
        .ok_or_else(|| Error::new(Kind::NotFound, "no media folder is configured"))
}

/// A media file, opened.
struct Media {
    file: std::fs::File,
    path: PathBuf,
    /// The real root and the real path, when a symlink was followed on the way (else the
    /// file is `root/relative` itself, and `relative` tells where it lies).
    followed: Option<(PathBuf, PathBuf)>,
}

/// Opens `relative` under `root`; refused (`403`, as nginx's `disable_symlinks`) when a
/// symlink leads out of the root. On the request's thread, as `files::open` opens.
///
/// Symlinks are rare in a media folder, so the file is first opened with none allowed
/// anywhere on its path (`openat2` with `RESOLVE_NO_SYMLINKS`): one system call, and what it
/// opens is inside the root by construction, since `relative` has no `..`
/// ([`paths::media_relative`]). Failing that (a symlink, a missing file, a kernel without
/// `openat2`), the real root is found and the file opened below it the same way, and then
/// the real path is resolved and compared with the real root, which answers every case.
fn open_media(root: &Path, relative: &str) -> Result<Media> {
    let direct = root.join(relative);
    if let Ok(file) = open_no_symlinks(&direct) {
        return Ok(Media {
            file,
            path: direct,
            followed: None,
        });
    }
    let root = std::fs::canonicalize(root)
        .map_err(|e| Error::internal("files.media_root cannot be resolved", e))?;
    let below = root.join(relative);
    if let Ok(file) = open_no_symlinks(&below) {
        return Ok(Media {
            file,
            path: below,
            followed: None,
        });
    }
    let real = std::fs::canonicalize(&below).map_err(super::open_error)?;
    if !real.starts_with(&root) {
        return Err(Error::new(
            Kind::Forbidden,
            "a symlink leads outside the media folder",
        ));
    }
    // The real path has no symlink left: opening it with none allowed closes the window in
    // which one could be put there since it was resolved.
    let file = match open_no_symlinks(&real) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSYS.raw_os_error()) => {
            std::fs::File::open(&real)
        }
        opened => opened,
    }
    .map_err(super::open_error)?;
    Ok(Media {
        file,
        path: real.clone(),
        followed: Some((root, real)),
    })
}

/// Opens `path` for reading unless a symlink is on its way (then `ELOOP`). Non-blocking, so a
/// FIFO put in the media folder cannot hold the worker in `open` (only regular files are served).
fn open_no_symlinks(path: &Path) -> std::io::Result<std::fs::File> {
    use rustix::fs::OFlags;
    super::open_without_symlinks(path, OFlags::RDONLY | OFlags::NONBLOCK)
}

/// Content-Type by extension, from `mime_guess`'s table (the one nginx's `mime.types` is close
/// to); the extension as `Path::extension` takes it. The last answer is kept per thread: finding
/// an extension in the table costs about 1,200 instructions (a binary search comparing without
/// case), a tenth of a media request's own work, and a media folder's files share few extensions.
fn media_type(relative: &str) -> &'static str {
    const UNKNOWN: &str = "application/octet-stream";
    thread_local! {
        static LAST: RefCell<(String, &'static str)> = const { RefCell::new((String::new(), UNKNOWN)) };
    }
    // Byte searches: '/' and '.' are ASCII, so never inside a multi-byte character.
    let last_of = |text: &str, byte| text.bytes().rposition(|b| b == byte);
    let name = last_of(relative, b'/').map_or(relative, |slash| &relative[slash + 1..]);
    let Some(ext) = last_of(name, b'.')
        .filter(|&dot| dot > 0)
        .map(|dot| &name[dot + 1..])
    else {
        return UNKNOWN;
    };
    LAST.with_borrow_mut(|(last, found)| {
        if last != ext || last.is_empty() {
            *found = mime_guess::from_ext(ext).first_raw().unwrap_or(UNKNOWN);
            last.clear();
            last.push_str(ext);
        }
        *found
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_answers_as_the_table_does_for_the_path() {
        let names = [
            "a.pdf",
            "a.PDF",
            "d/a.png",
            "d.x/a",
            "d.png/a.jpg",
            "a",
            ".bashrc",
            "d/.hidden",
            ".a.css",
            "a.",
            "a..js",
            "a.tar.gz",
            "a.unknownext",
            "d/a.svg",
            "a.pdf",
            "a.HTML",
            "é/ü.txt",
            "a.json",
            "a.png",
            "a.png",
        ];
        for name in names {
            let expected = mime_guess::from_path(name)
                .first_raw()
                .unwrap_or("application/octet-stream");
            assert_eq!(media_type(name), expected, "{name}");
        }
    }
}
