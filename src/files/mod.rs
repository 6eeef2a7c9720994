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

/// [`serve`] for a stored file: a small one is kept in memory once read (see [`Kept`]), and
/// answers from there while an `lstat` of its blob finds it unchanged. The blob's path is
/// upgate's own (made from the record's id, under the storage root).
///
/// # Errors
///
/// As [`serve`].
pub async fn serve_stored(
    method: &Method,
    headers: &HeaderMap,
    file: Serve<'_>,
) -> Result<Response<Body>> {
    check_method(method)?;
    let opened = match kept(file.path, Check::Lstat) {
        Some(opened) => opened,
        None => {
            let opened = open(file.path).await?;
            keep(file.path, &opened, SystemTime::now());
            opened
        }
    };
    respond(method, headers, opened, &file).await
}

/// [`serve`] with the file already opened by the caller, who has checked where it leads;
/// `file.path` is not opened again. With `keep_it`, a small file is kept in memory for
/// [`kept`] to find (`file.path` must then be the path it was opened by, free of symlinks).
///
/// # Errors
///
/// As [`serve`].
pub(crate) async fn serve_opened(
    method: &Method,
    headers: &HeaderMap,
    handle: std::fs::File,
    file: Serve<'_>,
    keep_it: bool,
) -> Result<Response<Body>> {
    check_method(method)?;
    let opened = read_opened(handle)?;
    if keep_it {
        keep(file.path, &opened, SystemTime::now());
    }
    respond(method, headers, opened, &file).await
}

/// [`serve`] with a file [`kept`] returned.
///
/// # Errors
///
/// As [`serve`].
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
    // Room for every header of a file answer and the gateway's own: none is added by growing.
    *res.headers_mut() = HeaderMap::with_capacity(16);
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
    // A body held whole has an exact length, which hyper writes as Content-Length itself; but
    // not for an empty one over HTTP/2 (an ended body gets no length there), so that keeps ours.
    let held_whole = method == Method::GET && whole.is_some() && count > 0;
    describe(res.headers_mut(), file, (!held_whole).then_some(count));
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
    // One pass over the request's names (every proxied request comes here, and most carry none
    // of these), not a hashed lookup of each; the first value of a name, as `get` gives.
    for (name, value) in headers {
        if CONDITIONAL.contains(name) {
            kept.entry(name).or_insert_with(|| value.clone());
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
    /// As read from disk (`None` only in tests).
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

    /// The stamp of the file `path` names, found as `check` says.
    fn of_path(path: &Path, check: Check) -> io::Result<Self> {
        match check {
            Check::Lstat => std::fs::symlink_metadata(path).map(|meta| Self::of(&meta)),
            Check::NoSymlinks => open_without_symlinks(
                path,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW,
            )?
            .metadata()
            .map(|meta| Self::of(&meta)),
        }
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

/// How long a kept file may answer from memory before it is read again, however unchanged
/// its stamp (nginx's `open_file_cache_valid` is 60 s too).
const KEPT_FOR: Duration = Duration::from_secs(60);

/// At most this much memory per worker goes to kept files, counted as their bytes, their
/// paths and [`ENTRY_COST`] each. A file that does not fit makes the worker drop the files
/// kept too long, then, if that is not enough, all it keeps.
const KEPT_BYTES: usize = 4 * 1024 * 1024;

/// What an entry costs beyond its bytes and its path: the map's slot, the entry, the allocations.
const ENTRY_COST: usize = 256;

/// How a kept file's path is checked before its kept bytes answer.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Check {
    /// `lstat`: for a stored blob, whose path upgate makes from the record's id.
    Lstat,
    /// Opened `O_PATH` with no symlink anywhere on the way (`openat2` with
    /// `RESOLVE_NO_SYMLINKS`) and `fstat`ed: for a media file, so that a folder on its path
    /// swapped for a symlink out of the media root is never passed, as [`serve_opened`]'s
    /// callers open it.
    NoSymlinks,
}

thread_local! {
    /// This worker's small files, by path.
    static KEPT: RefCell<Kept> = RefCell::new(Kept::default());
}

/// The small file this worker keeps for `path`, if `path` still names it unchanged (the same
/// device, inode, length, mtime and ctime). `None` sends the caller to open it.
pub(crate) fn kept(path: &Path, check: Check) -> Option<Opened> {
    let key = path.to_str()?;
    KEPT.with_borrow(|kept| {
        let opened = kept.get(key, Instant::now())?;
        let on_disk = Stamp::of_path(path, check).ok()?;
        (opened.stamp == Some(on_disk)).then_some(opened)
    })
}

/// Keeps a file just read from `path`, if it is small and settled: one changed less than
/// [`SETTLED`] before `wall_now` could change again with no change to its stamp.
fn keep(path: &Path, opened: &Opened, wall_now: SystemTime) {
    if let Some(key) = path.to_str()
        && opened.whole.is_some()
        && opened
            .stamp
            .is_some_and(|stamp| !stamp.changed_lately(wall_now))
    {
        KEPT.with_borrow_mut(|kept| kept.keep(key, opened, Instant::now()));
    }
}

/// Small files ([`SMALL`] bytes at most) a worker has read, by path, so that a file asked for
/// again and again (a thumbnail, an avatar) is answered from memory: three system calls a
/// request (read the request, check the path, write the answer) where reading it from disk
/// takes five or six.
#[derive(Default)]
struct Kept {
    by_path: HashMap<String, KeptFile, foldhash::fast::RandomState>,
    /// What the entries cost, as [`KEPT_BYTES`] counts.
    cost: usize,
}

struct KeptFile {
    whole: bytes::Bytes,
    len: u64,
    modified: SystemTime,
    stamp: Option<Stamp>,
    read_at: Instant,
}

fn cost(path: &str, whole: &bytes::Bytes) -> usize {
    whole.len() + path.len() + ENTRY_COST
}

impl Kept {
    /// The file kept under `path`, unless it was read [`KEPT_FOR`] ago or more.
    fn get(&self, path: &str, now: Instant) -> Option<Opened> {
        let kept = self.by_path.get(path)?;
        (now.saturating_duration_since(kept.read_at) < KEPT_FOR).then(|| Opened {
            file: None,
            len: kept.len,
            modified: kept.modified,
            whole: Some(kept.whole.clone()),
            stamp: kept.stamp,
        })
    }

    /// Keeps a small file just read (a larger one has no bytes in memory to keep).
    fn keep(&mut self, path: &str, opened: &Opened, now: Instant) {
        let Some(whole) = &opened.whole else { return };
        if let Some(old) = self.by_path.remove(path) {
            self.cost -= cost(path, &old.whole);
        }
        let needed = cost(path, whole);
        if self.cost + needed > KEPT_BYTES {
            self.by_path.retain(|path, kept| {
                let fresh = now.saturating_duration_since(kept.read_at) < KEPT_FOR;
                if !fresh {
                    self.cost -= cost(path, &kept.whole);
                }
                fresh
            });
        }
        if self.cost + needed > KEPT_BYTES {
            self.by_path.clear();
            self.cost = 0;
        }
        self.cost += needed;
        self.by_path.insert(
            path.to_owned(),
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

/// Opens `path` with `flags` (and `O_CLOEXEC`) unless a symlink is anywhere on it (then
/// `ELOOP`): `openat2` with `RESOLVE_NO_SYMLINKS`.
pub(crate) fn open_without_symlinks(
    path: &Path,
    flags: rustix::fs::OFlags,
) -> io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let fd = rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS,
    )?;
    Ok(std::fs::File::from(fd))
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

/// Content-Type, Content-Length (when given) and Content-Disposition of a 200 or 206.
fn describe(h: &mut HeaderMap, file: &Serve<'_>, length: Option<u64>) {
    let content_type = HeaderValue::from_str(file.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, content_type);
    if let Some(length) = length {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
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
        // Kept again: the cost follows the replacement, not the sum.
        kept.keep("a", &small(b"0123456789"), t0);
        assert_eq!(kept.cost, 10 + 1 + ENTRY_COST);
        // Empty files cost their entry: the budget bounds their number too.
        for i in 0..KEPT_BYTES / ENTRY_COST {
            kept.keep(&format!("e{i}"), &small(b""), t0 + KEPT_FOR / 2);
            assert!(kept.cost <= KEPT_BYTES);
        }
        assert!(kept.by_path.len() < KEPT_BYTES / ENTRY_COST);
        // A file past the budget drops those kept too long first, then all.
        let mut kept = Kept::default();
        kept.keep("old", &small(b"x"), t0);
        kept.keep("new", &small(b"y"), t0 + KEPT_FOR);
        static HALF: [u8; KEPT_BYTES / 2] = [0; KEPT_BYTES / 2];
        kept.keep("big", &small(&HALF), t0 + KEPT_FOR);
        kept.keep("big2", &small(&HALF[ENTRY_COST * 4..]), t0 + KEPT_FOR);
        assert!(kept.get("old", t0).is_none());
        assert!(
            kept.get("new", t0 + KEPT_FOR).is_some(),
            "fresh entries stay"
        );
        kept.keep("big3", &small(&HALF), t0 + KEPT_FOR);
        assert_eq!(kept.by_path.len(), 1, "then all go");
        assert_eq!(kept.cost, cost("big3", &bytes::Bytes::from_static(&HALF)));
    }

    /// Reads `path` as the media route does: the kept answer if any, else opened and kept.
    async fn media_get(path: &Path, wall_now: SystemTime) -> (StatusCode, Vec<u8>) {
        let file = Serve {
            path,
            content_type: "text/plain",
            disposition: None,
            etag_extra: "",
        };
        let none = HeaderMap::new();
        let res = match kept(path, Check::NoSymlinks) {
            Some(kept) => serve_kept(&Method::GET, &none, kept, file).await,
            None => {
                let opened = read_opened(std::fs::File::open(path).unwrap()).unwrap();
                keep(path, &opened, wall_now);
                respond(&Method::GET, &none, opened, &file).await
            }
        }
        .unwrap();
        let status = res.status();
        (
            status,
            res.into_body().collect().await.unwrap().to_bytes().to_vec(),
        )
    }

    #[tokio::test]
    async fn a_kept_file_answers_only_while_its_path_names_it_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("pub")).unwrap();
        let path = root.join("pub/a.txt");
        std::fs::write(&path, b"first").unwrap();
        let (now, later) = (SystemTime::now(), SystemTime::now() + SETTLED * 2);
        // Just written: not kept, its stamp could still change within one clock tick.
        assert_eq!(media_get(&path, now).await.1, b"first");
        assert!(kept(&path, Check::NoSymlinks).is_none());
        // Settled: kept.
        assert_eq!(media_get(&path, later).await.1, b"first");
        assert_eq!(
            kept(&path, Check::NoSymlinks).unwrap().whole.as_deref(),
            Some(&b"first"[..])
        );
        // Rewritten in place, same length, its mtime put back: the ctime tells.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, b"FIRST").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(kept(&path, Check::NoSymlinks).is_none());
        assert_eq!(media_get(&path, later).await.1, b"FIRST");
        assert!(kept(&path, Check::NoSymlinks).is_some());
        // Its folder moved out of the root and a symlink put in its place: the very same file
        // (device, inode, times) at the same path, and an lstat passes, but it is outside now.
        let outside = dir.path().join("outside");
        std::fs::rename(root.join("pub"), &outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("pub")).unwrap();
        assert!(kept(&path, Check::Lstat).is_some(), "the case Lstat misses");
        assert!(kept(&path, Check::NoSymlinks).is_none());
        // The file itself swapped for a symlink to the same bytes, or removed: never kept.
        std::fs::remove_file(root.join("pub")).unwrap();
        std::fs::rename(&outside, root.join("pub")).unwrap();
        assert!(
            kept(&path, Check::NoSymlinks).is_some(),
            "back in place, unchanged"
        );
        let elsewhere = dir.path().join("elsewhere.txt");
        std::fs::rename(&path, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert!(kept(&path, Check::NoSymlinks).is_none());
        assert!(kept(&path, Check::Lstat).is_none());
        std::fs::remove_file(&path).unwrap();
        assert!(kept(&path, Check::Lstat).is_none());
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
