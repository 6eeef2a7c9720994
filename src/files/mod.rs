//! Serving files as nginx does: validators, conditional requests, one byte range, HEAD, streamed in large chunks.
//!
//! [`serve`] is the one responder: the signed routes, `X-Accel-Redirect` and the upload API's
//! `GET /uploads/<name>` all end in it, so every file answer carries the same headers.

pub mod paths;
pub mod range;
pub mod routes;
pub mod signed;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::TryStreamExt as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio_util::io::ReaderStream;

use crate::body::{self, Body};
use crate::error::{Error, Kind, Result};
use range::RangeOutcome;

/// Bytes read from disk at a time: few system calls per megabyte, and at most one chunk of a
/// response waits in memory while the client is slow.
const CHUNK: usize = 256 * 1024;

/// The request headers a file answer depends on; all others are irrelevant to [`serve`].
const CONDITIONAL: [HeaderName; 4] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
];

/// One file to answer with.
pub struct Serve<'a> {
    pub path: &'a Path,
    pub content_type: &'a str,
    /// `Content-Disposition`: (`attachment` or `inline`, the file name); `None` sends none.
    pub disposition: Option<(&'a str, &'a str)>,
    /// Mixed into the ETag to tell apart files of equal size and mtime (the file id, or `""`).
    pub etag_extra: &'a str,
}

/// Answers GET or HEAD with a file: `200`, `206` for one satisfiable `Range` (subject to
/// `If-Range`), `304` for a matching `If-None-Match`/`If-Modified-Since`, `416` with
/// `Content-Range: bytes */len` for an unsatisfiable range. The body is read from disk as the
/// client takes it, [`CHUNK`] bytes at a time; a read error ends the response with an error,
/// never with a short body that looks complete.
///
/// # Errors
///
/// `method_not_allowed` for other methods, `not_found` for a missing file or a directory,
/// `forbidden` for a file the gateway may not read, `internal` for other I/O failures.
pub async fn serve(
    method: &Method,
    headers: &HeaderMap,
    file: Serve<'_>,
) -> Result<Response<Body>> {
    check_method(method)?;
    let opened = open(file.path).await?;
    respond(method, headers, opened, &file).await
}

/// [`serve`] for a stored file, whose bytes never change under its id (a replaced file gets a
/// new id, a removed one loses its record first): a small one is kept in memory once read,
/// so asking for it again costs no open, stat, read or close (see [`Kept`]).
///
/// # Errors
///
/// As [`serve`].
pub async fn serve_stored(
    method: &Method,
    headers: &HeaderMap,
    file: Serve<'_>,
    id: &str,
) -> Result<Response<Body>> {
    check_method(method)?;
    let now = Instant::now();
    let opened = match KEPT.with_borrow(|kept| kept.get(id, now)) {
        Some(opened) => opened,
        None => {
            let opened = open(file.path).await?;
            // Its id names its bytes: no stamp to check.
            let opened = Opened {
                stamp: None,
                ..opened
            };
            KEPT.with_borrow_mut(|kept| kept.keep(id, &opened, now));
            opened
        }
    };
    respond(method, headers, opened, &file).await
}

/// A media file [`serve_opened`] kept, if `path` still names it unchanged: one `lstat` in
/// place of the open, stat, read and close. `None` sends the caller to open it.
pub(crate) fn kept_media(path: &Path) -> Option<Opened> {
    let key = path.to_str()?;
    let now = Instant::now();
    KEPT_MEDIA.with_borrow(|kept| {
        let opened = kept.get(key, now)?;
        let on_disk = Stamp::of_path(path).ok()?;
        (opened.stamp == Some(on_disk)).then_some(opened)
    })
}

/// [`serve`] with the file already opened by the caller, who has checked where it leads;
/// `file.path` is not opened again.
///
/// # Errors
///
/// As [`serve`].
/// With `keep`, a small media file opened from a path free of symlinks (`file.path`) is kept
/// in memory for [`kept_media`] to find, unless it changed too recently to tell.
pub(crate) async fn serve_opened(
    method: &Method,
    headers: &HeaderMap,
    handle: std::fs::File,
    file: Serve<'_>,
    keep: bool,
) -> Result<Response<Body>> {
    check_method(method)?;
    let opened = read_opened(handle)?;
    if keep
        && let Some(key) = file.path.to_str()
        && opened
            .stamp
            .is_some_and(|stamp| !stamp.changed_lately(SystemTime::now()))
    {
        KEPT_MEDIA.with_borrow_mut(|kept| kept.keep(key, &opened, Instant::now()));
    }
    respond(method, headers, opened, &file).await
}

/// A kept media file answers only while its path names it unchanged.
pub(crate) async fn serve_kept(
    method: &Method,
    headers: &HeaderMap,
    opened: Opened,
    file: Serve<'_>,
) -> Result<Response<Body>> {
    check_method(method)?;
    respond(method, headers, opened, &file).await
}

fn check_method(method: &Method) -> Result<()> {
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    Err(Error::new(
        Kind::MethodNotAllowed,
        "files answer GET and HEAD only",
    ))
}

/// The answer to GET or HEAD once the file is open: see [`serve`].
async fn respond(
    method: &Method,
    headers: &HeaderMap,
    opened: Opened,
    file: &Serve<'_>,
) -> Result<Response<Body>> {
    let Opened {
        file: handle,
        len,
        modified,
        whole,
        ..
    } = opened;
    let etag = range::etag(len, modified, file.etag_extra);
    let mut res = Response::new(body::empty());
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    insert(h, header::ETAG, &etag);
    if let Some(date) = last_modified(modified) {
        h.insert(header::LAST_MODIFIED, date);
    }
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if range::not_modified(
        text(header::IF_NONE_MATCH),
        text(header::IF_MODIFIED_SINCE),
        &etag,
        modified,
    ) {
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(res);
    }
    let wanted = if range::if_range_allows(text(header::IF_RANGE), &etag, modified) {
        range::parse_range(text(header::RANGE), len)
    } else {
        RangeOutcome::Full
    };
    let (start, count) = match wanted {
        RangeOutcome::Full => (0, len),
        RangeOutcome::Partial { start, end } => {
            *res.status_mut() = StatusCode::PARTIAL_CONTENT;
            insert(
                res.headers_mut(),
                header::CONTENT_RANGE,
                &range::content_range(start, end, len),
            );
            (start, end - start + 1)
        }
        RangeOutcome::Unsatisfiable => return Ok(unsatisfiable(res, len)),
    };
    describe(res.headers_mut(), file, count);
    if method == Method::GET {
        *res.body_mut() = match (whole, handle) {
            (Some(bytes), _) => body::full(bytes.slice(range_of(start, count))),
            (None, Some(handle)) => stream(tokio::fs::File::from_std(handle), start, count).await?,
            (None, None) => unreachable!("an opened file has its bytes or its handle"),
        };
    }
    Ok(res)
}

/// The headers of [`CONDITIONAL`] from a request, for answering with a file later (after the
/// request itself has gone upstream, as `X-Accel-Redirect` does).
pub fn conditional_headers(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for name in CONDITIONAL {
        if let Some(v) = headers.get(&name) {
            kept.insert(name, v.clone());
        }
    }
    kept
}

/// Files up to this size are read whole in the step that opens them.
const SMALL: u64 = 64 * 1024;

/// A regular file, opened: its handle, length, modification time, and its bytes when it is
/// small (then the handle may be gone: a file [`Kept`] in memory has none).
pub(crate) struct Opened {
    file: Option<std::fs::File>,
    len: u64,
    modified: SystemTime,
    whole: Option<bytes::Bytes>,
    /// As read from disk; a stored file kept in memory has none.
    stamp: Option<Stamp>,
}

/// What tells a file's bytes on disk apart without reading them: which file it is, its
/// length, and when its content (mtime) or anything about it (ctime: a rename, a chmod, a
/// write) last changed, to the nanosecond the file system keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The kernel stamps file times from a clock that moves in ticks (a few ms): two writes within
/// one tick leave the same times. A file changed less than this long ago is not kept, as git
/// does not trust an index entry as new as the index ("racy git").
const SETTLED: Duration = Duration::from_secs(2);

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The stamp of what `path` names itself (a symlink is not followed: it never matches).
    fn of_path(path: &Path) -> io::Result<Self> {
        std::fs::symlink_metadata(path).map(|meta| Self::of(&meta))
    }

    /// Whether the file changed less than [`SETTLED`] before `now` (or seems to from the future).
    fn changed_lately(&self, now: SystemTime) -> bool {
        let (secs, nanos) = self.mtime.max(self.ctime);
        let changed = u64::try_from(secs)
            .ok()
            .map(|secs| UNIX_EPOCH + Duration::new(secs, u32::try_from(nanos).unwrap_or(0)));
        changed.is_none_or(|t| now.duration_since(t).is_ok_and(|age| age < SETTLED) || t > now)
    }
}

/// Opens a file on the request's own thread, as nginx does without `aio threads`: opening, stat
/// and reading a small cached file take microseconds, less than handing the work to another
/// thread and back (which cost two context switches a request). Larger files stream from the
/// blocking pool.
async fn open(path: &Path) -> Result<Opened> {
    open_blocking(path)
}

fn open_blocking(path: &Path) -> Result<Opened> {
    read_opened(std::fs::File::open(path).map_err(open_error)?)
}

/// Stats an open file, and reads it whole when it is small.
fn read_opened(file: std::fs::File) -> Result<Opened> {
    use std::io::Read as _;
    let meta = file.metadata().map_err(open_error)?;
    if !meta.is_file() {
        return Err(Error::new(Kind::NotFound, "no such file"));
    }
    let len = meta.len();
    let whole = if len <= SMALL {
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or_default());
        (&file)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|e| Error::internal("reading a file", e))?;
        if buf.len() as u64 != len {
            return Err(Error::internal(
                "reading a file",
                io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while read"),
            ));
        }
        Some(bytes::Bytes::from(buf))
    } else {
        None
    };
    Ok(Opened {
        file: Some(file),
        len,
        modified: meta.modified().unwrap_or(UNIX_EPOCH),
        whole,
        stamp: Some(Stamp::of(&meta)),
    })
}

/// `count` bytes from `start` as an index range of a file held in memory (at most [`SMALL`]).
fn range_of(start: u64, count: u64) -> std::ops::Range<usize> {
    let start = usize::try_from(start).unwrap_or(usize::MAX);
    start..start.saturating_add(usize::try_from(count).unwrap_or(usize::MAX))
}

/// How long a kept file is served from memory before it is read again: a stored file changes
/// only when someone edits the storage by hand, and then it shows within this time (nginx's
/// `open_file_cache_valid` is 60 s too).
const KEPT_FOR: Duration = Duration::from_secs(60);

/// At most this many bytes of small stored files are kept per worker; a file that does not
/// fit any more makes the worker drop all it kept and start again.
const KEPT_BYTES: usize = 4 * 1024 * 1024;

thread_local! {
    /// This worker's small stored files, by id.
    static KEPT: RefCell<Kept> = RefCell::new(Kept::default());
    /// This worker's small media files, by path, each with the [`Stamp`] it had when read.
    static KEPT_MEDIA: RefCell<Kept> = RefCell::new(Kept::default());
}

/// Small files ([`SMALL`] bytes at most) a worker has read, so that a file asked for again and
/// again (a thumbnail, an avatar) is answered from memory: two or three system calls a request
/// (read the request, `lstat` a media file, write the answer) where reading it from disk takes
/// six. Stored files are kept by id, media files by path.
#[derive(Default)]
struct Kept {
    by_key: HashMap<String, KeptFile, foldhash::fast::RandomState>,
    bytes: usize,
}

struct KeptFile {
    whole: bytes::Bytes,
    len: u64,
    modified: SystemTime,
    /// A media file's stamp when read; `None` for a stored file (its id names its bytes).
    stamp: Option<Stamp>,
    read_at: Instant,
}

impl Kept {
    /// The file kept under `key`, unless it was read [`KEPT_FOR`] ago or more.
    fn get(&self, key: &str, now: Instant) -> Option<Opened> {
        let kept = self.by_key.get(key)?;
        (now.saturating_duration_since(kept.read_at) < KEPT_FOR).then(|| Opened {
            file: None,
            len: kept.len,
            modified: kept.modified,
            whole: Some(kept.whole.clone()),
            stamp: kept.stamp,
        })
    }

    /// Keeps a small file just read (a larger one has no bytes in memory to keep).
    fn keep(&mut self, key: &str, opened: &Opened, now: Instant) {
        let Some(whole) = &opened.whole else { return };
        if let Some(old) = self.by_key.remove(key) {
            self.bytes -= old.whole.len();
        }
        if self.bytes + whole.len() > KEPT_BYTES {
            self.by_key.clear();
            self.bytes = 0;
        }
        self.bytes += whole.len();
        self.by_key.insert(
            key.to_owned(),
            KeptFile {
                whole: whole.clone(),
                len: opened.len,
                modified: opened.modified,
                stamp: opened.stamp,
                read_at: now,
            },
        );
    }
}

/// How a failed open or lookup answers, as nginx maps errno: absent 404, not readable 403.
pub(crate) fn open_error(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::NotFound
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::IsADirectory
        | io::ErrorKind::InvalidFilename => Error::new(Kind::NotFound, "no such file"),
        io::ErrorKind::PermissionDenied => {
            Error::new(Kind::Forbidden, "the file may not be read").with_source(e)
        }
        _ => Error::internal("opening a file", e),
    }
}

/// Content-Type, Content-Length and Content-Disposition of a 200 or 206.
fn describe(h: &mut HeaderMap, file: &Serve<'_>, count: u64) {
    let content_type = HeaderValue::from_str(file.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if let Some((kind, name)) = file.disposition {
        insert(
            h,
            header::CONTENT_DISPOSITION,
            &range::content_disposition(kind, name),
        );
    }
}

/// `416` as every other upgate error, a JSON body, plus the `Content-Range` RFC 9110 §15.5.17 asks for.
fn unsatisfiable(res: Response<Body>, len: u64) -> Response<Body> {
    let (mut parts, _) = res.into_parts();
    let answer = body::json(
        StatusCode::RANGE_NOT_SATISFIABLE,
        &serde_json::json!({
            "error": "range_not_satisfiable",
            "verbose_error": format!("the file has {len} bytes; the range asks for none of them"),
        }),
    );
    let (json_parts, json_body) = answer.into_parts();
    parts.status = json_parts.status;
    parts.headers.extend(json_parts.headers);
    insert(
        &mut parts.headers,
        header::CONTENT_RANGE,
        &range::unsatisfied_range(len),
    );
    Response::from_parts(parts, json_body)
}

/// `count` bytes from `start`, read as the client takes them.
async fn stream(mut handle: tokio::fs::File, start: u64, count: u64) -> Result<Body> {
    if start > 0 {
        handle
            .seek(SeekFrom::Start(start))
            .await
            .map_err(|e| Error::internal("seeking in a file", e))?;
    }
    // A small file gets a small buffer; `max(1)` because a zero capacity reads nothing at all.
    let capacity = usize::try_from(count).map_or(CHUNK, |n| n.clamp(1, CHUNK));
    let chunks = ReaderStream::with_capacity(handle.take(count), capacity);
    Ok(body::boxed(StreamBody::new(chunks.map_ok(Frame::data))))
}

/// `Last-Modified` for `modified`. The last one made on this thread is kept: formatting a
/// date costs more than comparing one, and a busy file is asked for again and again.
fn last_modified(modified: SystemTime) -> Option<HeaderValue> {
    thread_local! {
        static LAST: RefCell<Option<(SystemTime, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((t, value)) if *t == modified => Some(value.clone()),
        _ => {
            let date = bytes::Bytes::from(range::http_date(modified));
            let value = HeaderValue::from_maybe_shared(date).ok()?;
            *last = Some((modified, value.clone()));
            Some(value)
        }
    })
}

/// Sets a header whose value this module made; such values are always visible ASCII.
fn insert(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    async fn answer(method: Method, headers: &[(HeaderName, &str)]) -> (Response<Body>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.txt");
        let bytes: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        let file = Serve {
            path: &path,
            content_type: "text/plain",
            disposition: Some(("inline", "f.txt")),
            etag_extra: "x",
        };
        let res = serve(&method, &map, file).await.unwrap();
        let (parts, body) = res.into_parts();
        let got = body.collect().await.unwrap().to_bytes().to_vec();
        (Response::from_parts(parts, body::empty()), got)
    }

    #[tokio::test]
    async fn whole_file_in_several_chunks() {
        let (res, got) = answer(Method::GET, &[]).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(got.len(), 600_000);
        assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
        assert_eq!(res.headers()[header::CONTENT_LENGTH], "600000");
        assert_eq!(res.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }

    #[tokio::test]
    async fn range_past_a_chunk_boundary() {
        let (res, got) = answer(Method::GET, &[(header::RANGE, "bytes=262140-262150")]).await;
        assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            res.headers()[header::CONTENT_RANGE],
            "bytes 262140-262150/600000"
        );
        let want: Vec<u8> = (262_140..=262_150u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn a_stale_if_range_gets_the_whole_file() {
        let (res, got) = answer(
            Method::GET,
            &[(header::RANGE, "bytes=0-9"), (header::IF_RANGE, "\"old\"")],
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(got.len(), 600_000);
    }

    #[tokio::test]
    async fn other_methods_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = |path| Serve {
            path,
            content_type: "text/plain",
            disposition: None,
            etag_extra: "",
        };
        let none = HeaderMap::new();
        let missing = dir.path().join("missing");
        let e = serve(&Method::GET, &none, file(&missing))
            .await
            .unwrap_err();
        assert_eq!(e.kind, Kind::NotFound);
        let e = serve(&Method::GET, &none, file(dir.path()))
            .await
            .unwrap_err();
        assert_eq!(e.kind, Kind::NotFound, "a directory is not a file");
        let e = serve(&Method::POST, &none, file(&missing))
            .await
            .unwrap_err();
        assert_eq!(e.kind, Kind::MethodNotAllowed);
    }

    fn small(bytes: &'static [u8]) -> Opened {
        Opened {
            file: None,
            len: bytes.len() as u64,
            modified: UNIX_EPOCH,
            whole: Some(bytes::Bytes::from_static(bytes)),
            stamp: None,
        }
    }

    #[test]
    fn kept_files_are_served_for_a_while_within_a_budget() {
        let mut kept = Kept::default();
        let t0 = Instant::now();
        kept.keep("a", &small(b"0123456789"), t0);
        let got = kept.get("a", t0 + KEPT_FOR / 2).expect("kept");
        assert_eq!(got.whole.as_deref(), Some(&b"0123456789"[..]));
        assert!(got.file.is_none());
        assert!(
            kept.get("a", t0 + KEPT_FOR).is_none(),
            "read again after KEPT_FOR"
        );
        assert!(kept.get("b", t0).is_none());
        // Kept again: the byte count follows the replacement, not the sum.
        kept.keep("a", &small(b"0123456789"), t0);
        assert_eq!(kept.bytes, 10);
        // A file past the budget empties it first.
        static BIG: [u8; KEPT_BYTES - 5] = [0; KEPT_BYTES - 5];
        kept.keep("big", &small(&BIG), t0);
        assert!(kept.get("a", t0).is_none());
        assert!(kept.get("big", t0).is_some());
        assert_eq!(kept.bytes, KEPT_BYTES - 5);
    }

    /// Reads `path` through `serve_opened` as the media route does, keeping it if it may.
    async fn media_get(path: &Path) -> (StatusCode, Vec<u8>) {
        let file = Serve {
            path,
            content_type: "text/plain",
            disposition: None,
            etag_extra: "",
        };
        let none = HeaderMap::new();
        let res = match kept_media(path) {
            Some(kept) => serve_kept(&Method::GET, &none, kept, file).await,
            None => {
                let handle = std::fs::File::open(path).unwrap();
                serve_opened(&Method::GET, &none, handle, file, true).await
            }
        }
        .unwrap();
        let status = res.status();
        (
            status,
            res.into_body().collect().await.unwrap().to_bytes().to_vec(),
        )
    }

    fn age(path: &Path, secs: u64) {
        let then = SystemTime::now() - Duration::from_secs(secs);
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(then).unwrap();
    }

    #[tokio::test]
    async fn a_kept_media_file_is_checked_against_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        // Changed a moment ago: not kept (its ctime is new whatever its mtime says).
        std::fs::write(&path, b"first").unwrap();
        age(&path, 60);
        assert_eq!(media_get(&path).await.1, b"first");
        assert!(kept_media(&path).is_none(), "ctime too recent to keep");
        // Settled: kept, and answered from memory while the path names it unchanged.
        let settled = dir.path().join("b.txt");
        std::fs::write(&settled, b"second").unwrap();
        let stamp = Stamp::of_path(&settled).unwrap();
        assert!(stamp.changed_lately(SystemTime::now()));
        assert!(!stamp.changed_lately(SystemTime::now() + SETTLED));
        KEPT_MEDIA.with_borrow_mut(|kept| {
            let mut opened = small(b"second");
            opened.stamp = Some(stamp);
            kept.keep(settled.to_str().unwrap(), &opened, Instant::now());
        });
        assert_eq!(
            kept_media(&settled).unwrap().whole.as_deref(),
            Some(&b"second"[..])
        );
        // Rewritten in place with the same length and its mtime put back: ctime tells.
        std::fs::write(&settled, b"SECOND").unwrap();
        age(&settled, 0);
        assert!(kept_media(&settled).is_none());
        assert_eq!(
            media_get(&settled).await,
            (StatusCode::OK, b"SECOND".to_vec())
        );
        // Replaced by a symlink to the same bytes: never the kept answer.
        std::fs::remove_file(&settled).unwrap();
        std::os::unix::fs::symlink(&path, &settled).unwrap();
        assert!(kept_media(&settled).is_none());
        // Removed: not found, as before it was kept.
        std::fs::remove_file(&settled).unwrap();
        assert!(kept_media(&settled).is_none());
    }

    #[test]
    fn conditional_headers_keep_only_what_serving_reads() {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-1"));
        h.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        let kept = conditional_headers(&h);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[header::RANGE], "bytes=0-1");
    }
}
