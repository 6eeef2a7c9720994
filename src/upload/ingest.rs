//! Streaming a multipart body to disk: each file part into a temp file, hashed, sniffed and bounded
//! while it streams; nothing is kept unless every part passes (the caller commits).

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::HeaderMap;
use http_body_util::BodyDataStream;

use super::formats::{self, Detected, Format, Sniffer};
use super::names;
use super::store::{IN_FLIGHT_KIB, Store};
use crate::body::Body;
use crate::error::{Error, Kind, Result};

/// The most a text field may hold, all text fields together (names included), and how many
/// there may be: they are kept in memory.
const MAX_FIELD_BYTES: usize = 64 * 1024;
const MAX_FIELDS_BYTES: usize = 1024 * 1024;
const MAX_FIELDS: usize = 1000;
/// Bytes of the body that are neither file nor field data (boundaries, part headers, what the
/// parser holds ahead): beyond this a body is an attack on memory, not a form.
const MAX_OVERHEAD: u64 = 2 * 1024 * 1024;
/// Bytes gathered before each write: large sequential writes, one blocking call per batch.
const WRITE_BATCH: usize = 256 * 1024;
/// Written bytes after which the disk is asked to catch up (fdatasync) while the upload goes on,
/// so the final fsync finds little left.
const FLUSH_EVERY: u64 = 32 << 20;

/// What a request may store.
#[derive(Debug, Clone)]
pub struct Policy {
    pub accept: Vec<Format>,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
    pub max_files: u64,
    /// Names already stored in the session, with their sizes (a same-named upload replaces one).
    pub existing: HashMap<String, u64>,
    /// The longest wait for the next piece of the body (nginx's `client_body_timeout`).
    pub body_timeout: Duration,
}

impl Policy {
    fn room_bytes(&self) -> u64 {
        let used: u64 = self.existing.values().sum();
        self.max_total_bytes.saturating_sub(used)
    }
}

/// A temp file that is removed unless it was handed on; so an error or a dropped request leaves nothing.
#[derive(Debug)]
pub struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    pub fn path(&self) -> &std::path::Path {
        self.path.as_deref().unwrap_or(std::path::Path::new(""))
    }

    /// The file has been renamed away: nothing left to remove.
    pub fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// One stored-to-temp file part.
#[derive(Debug)]
pub struct Part {
    pub field: String,
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub format: Format,
    pub temp: TempFile,
}

/// The outcome of a whole request: its files, and its text fields in order.
#[derive(Debug, Default)]
pub struct Ingested {
    pub parts: Vec<Part>,
    pub fields: Vec<(String, String)>,
}

/// Why the guarded body stream failed, when it was not the client going away (0: it was).
const CUT_TIMEOUT: u8 = 1;
const CUT_OVERHEAD: u8 = 2;

/// Byte accounting shared by the body stream and the parser loop.
#[derive(Default)]
struct Meter {
    /// Bytes read from the network.
    pulled: AtomicU64,
    /// Bytes handed out as file or field data.
    delivered: AtomicU64,
    cut: AtomicU8,
}

/// The request body as the parser reads it: each piece must come within `timeout`, and the bytes
/// that are not data stay under [`MAX_OVERHEAD`].
fn guarded(
    body: Body,
    meter: Arc<Meter>,
    timeout: Duration,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    futures_util::stream::unfold(
        (BodyDataStream::new(body), meter, false),
        move |(mut inner, meter, done)| async move {
            if done {
                return None;
            }
            let fail = |why: u8, what: &str| {
                meter.cut.store(why, Ordering::Relaxed);
                io::Error::other(what.to_string())
            };
            match tokio::time::timeout(timeout, inner.next()).await {
                Err(_) => Some((
                    Err(fail(CUT_TIMEOUT, "the request body stalled")),
                    (inner, meter, true),
                )),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some((Err(io::Error::other(e)), (inner, meter, true))),
                Ok(Some(Ok(chunk))) => {
                    let pulled = meter
                        .pulled
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed)
                        + chunk.len() as u64;
                    if pulled.saturating_sub(meter.delivered.load(Ordering::Relaxed)) > MAX_OVERHEAD
                    {
                        let e = fail(CUT_OVERHEAD, "multipart headers too large");
                        return Some((Err(e), (inner, meter, true)));
                    }
                    Some((Ok(chunk), (inner, meter, false)))
                }
            }
        },
    )
}

/// Reads a `multipart/form-data` body to the end, storing each file part in the temp area.
pub async fn ingest(
    store: &Store,
    headers: &HeaderMap,
    body: Body,
    policy: &Policy,
) -> Result<Ingested> {
    let boundary = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .ok_or_else(|| Error::new(Kind::BadRequest, "not multipart/form-data (or no boundary)"))?;
    let meter = Arc::new(Meter::default());
    let stream = guarded(body, meter.clone(), policy.body_timeout);
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut reader = Reader {
        meter,
        total: 0,
        fields_bytes: 0,
    };
    let mut out = Ingested::default();
    while let Some(field) = multipart.next_field().await.map_err(|e| reader.error(e))? {
        let field_name = field.name().unwrap_or("").to_string();
        match field.file_name().map(str::to_string) {
            // A file input left empty is sent with an empty filename and no content.
            Some(raw) if raw.is_empty() => reader.drain(field).await?,
            Some(raw) => {
                let part = reader
                    .file_part(store, field, field_name, &raw, policy, &out)
                    .await?;
                out.parts.push(part);
            }
            None => {
                if out.fields.len() >= MAX_FIELDS {
                    return Err(Error::new(
                        Kind::BadRequest,
                        format!("more than {MAX_FIELDS} text fields"),
                    ));
                }
                let text = reader.text_field(field, &field_name).await?;
                out.fields.push((field_name, text));
            }
        }
    }
    if out.parts.is_empty() {
        return Err(Error::new(Kind::BadRequest, "no file part in the request"));
    }
    Ok(out)
}

/// The parser loop's state: byte accounting and the limits met so far.
struct Reader {
    meter: Arc<Meter>,
    total: u64,
    fields_bytes: usize,
}

impl Reader {
    /// The next data chunk of a field, counted as delivered.
    async fn chunk(&self, field: &mut multer::Field<'_>) -> Result<Option<Bytes>> {
        let chunk = field.chunk().await.map_err(|e| self.error(e))?;
        if let Some(c) = &chunk {
            self.meter
                .delivered
                .fetch_add(c.len() as u64, Ordering::Relaxed);
        }
        Ok(chunk)
    }

    fn error(&self, e: multer::Error) -> Error {
        match self.meter.cut.load(Ordering::Relaxed) {
            CUT_TIMEOUT => {
                Error::new(Kind::RequestTimeout, "the request body stalled").with_source(e)
            }
            CUT_OVERHEAD => {
                Error::new(Kind::BadRequest, "multipart part headers are too large").with_source(e)
            }
            _ => multipart_error(e),
        }
    }

    async fn drain(&self, mut field: multer::Field<'_>) -> Result<()> {
        while self.chunk(&mut field).await?.is_some() {}
        Ok(())
    }

    async fn text_field(&mut self, mut field: multer::Field<'_>, name: &str) -> Result<String> {
        let mut buf = Vec::new();
        self.fields_bytes += name.len();
        while let Some(chunk) = self.chunk(&mut field).await? {
            buf.extend_from_slice(&chunk);
            self.fields_bytes += chunk.len();
            if buf.len() > MAX_FIELD_BYTES || self.fields_bytes > MAX_FIELDS_BYTES {
                return Err(Error::new(Kind::BadRequest, "a text field is too long"));
            }
        }
        if self.fields_bytes > MAX_FIELDS_BYTES {
            return Err(Error::new(Kind::BadRequest, "the text fields are too long"));
        }
        String::from_utf8(buf)
            .map_err(|_| Error::new(Kind::BadRequest, "a text field is not UTF-8"))
    }

    async fn file_part(
        &mut self,
        store: &Store,
        mut field: multer::Field<'_>,
        field_name: String,
        raw_name: &str,
        policy: &Policy,
        so_far: &Ingested,
    ) -> Result<Part> {
        let name = names::sanitize(raw_name).ok_or_else(|| {
            Error::new(
                Kind::BadRequest,
                format!("file name {raw_name:?} has nothing safe left"),
            )
        })?;
        if so_far.parts.iter().any(|p| p.name == name) {
            return Err(Error::new(
                Kind::BadRequest,
                format!("two files named {name:?} in one request"),
            ));
        }
        check_count(policy, so_far, &name)?;
        let replaced = policy.existing.get(&name).copied().unwrap_or(0);
        let room = policy.room_bytes() + replaced_so_far(policy, so_far) + replaced;
        let mut temp = TempFile { path: None };
        let path = store.temp_path();
        let file = std::fs::File::create_new(&path).map_err(storage_error)?;
        temp.path = Some(path);
        let mut writer = PartWriter::new(file, store.in_flight.clone());
        let mut size = 0u64;
        while let Some(chunk) = self.chunk(&mut field).await? {
            size += chunk.len() as u64;
            if size > policy.max_file_bytes {
                return Err(Error::new(
                    Kind::TooLarge,
                    format!("{name:?} is larger than {} bytes", policy.max_file_bytes),
                ));
            }
            self.total += chunk.len() as u64;
            if self.total > room {
                return Err(Error::new(
                    Kind::QuotaExceeded,
                    "the byte quota would be passed",
                ));
            }
            writer.push(chunk).await?;
        }
        let written = writer.finish().await?;
        let format = formats::check(&written.detected, &name, &policy.accept)
            .map_err(|why| Error::new(Kind::UnsupportedFormat, why))?;
        Ok(Part {
            field: field_name,
            name,
            size,
            sha256: written.sha256,
            format,
            temp,
        })
    }
}

fn multipart_error(e: multer::Error) -> Error {
    let what = match e {
        multer::Error::StreamReadFailed(_) => "the request body ended early",
        multer::Error::IncompleteStream | multer::Error::IncompleteFieldData { .. } => {
            "the multipart body is cut off"
        }
        _ => "malformed multipart body",
    };
    Error::new(Kind::BadRequest, what).with_source(e)
}

/// Bytes that earlier parts of this request free by replacing stored files of the same name.
fn replaced_so_far(policy: &Policy, so_far: &Ingested) -> u64 {
    so_far
        .parts
        .iter()
        .filter_map(|p| policy.existing.get(&p.name))
        .sum()
}

fn check_count(policy: &Policy, so_far: &Ingested, name: &str) -> Result<()> {
    let is_new = |n: &str| !policy.existing.contains_key(n);
    let new_files =
        so_far.parts.iter().filter(|p| is_new(&p.name)).count() as u64 + u64::from(is_new(name));
    if policy.existing.len() as u64 + new_files > policy.max_files {
        return Err(Error::new(
            Kind::QuotaExceeded,
            format!("the session may hold at most {} files", policy.max_files),
        ));
    }
    Ok(())
}

pub fn storage_error(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(122 /* EDQUOT */) {
        Error::new(Kind::InsufficientStorage, "the disk is full").with_source(e)
    } else {
        Error::internal("writing the upload", e)
    }
}

struct Written {
    sha256: String,
    detected: Detected,
}

/// What a part's bytes pass through on their way to disk.
struct WriteState {
    file: std::fs::File,
    sha: ring::digest::Context,
    sniffer: Sniffer,
}

/// Writes a part in batches on the blocking pool: one batch is written while the next one is
/// read from the network, so at most two batches are in memory and no thread waits on a client.
struct PartWriter {
    batch: Vec<Bytes>,
    batched: usize,
    /// The batch's share of [`Store::in_flight`], held until it is written.
    budget: Vec<tokio::sync::OwnedSemaphorePermit>,
    budget_pool: Arc<tokio::sync::Semaphore>,
    state: Option<WriteState>,
    in_flight: Option<tokio::task::JoinHandle<io::Result<WriteState>>>,
    written: u64,
    flushed_at: u64,
    flushing: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl PartWriter {
    fn new(file: std::fs::File, budget_pool: Arc<tokio::sync::Semaphore>) -> Self {
        let state = WriteState {
            file,
            sha: ring::digest::Context::new(&ring::digest::SHA256),
            sniffer: Sniffer::new(),
        };
        Self {
            batch: Vec::new(),
            batched: 0,
            budget: Vec::new(),
            budget_pool,
            state: Some(state),
            in_flight: None,
            written: 0,
            flushed_at: 0,
            flushing: None,
        }
    }

    async fn push(&mut self, chunk: Bytes) -> Result<()> {
        let kib = u32::try_from(chunk.len().div_ceil(1024))
            .map_or(IN_FLIGHT_KIB, |k| k.clamp(1, IN_FLIGHT_KIB));
        let permit = match self.budget_pool.clone().try_acquire_many_owned(kib) {
            Ok(permit) => permit,
            Err(_) => {
                // The budget is spent, much of it perhaps in half-full batches of parts that all
                // wait here: this part writes what it holds first, so its share comes back
                // whatever the others do, and the waiting always ends.
                if !self.batch.is_empty() {
                    self.flush().await?;
                }
                self.budget_pool
                    .clone()
                    .acquire_many_owned(kib)
                    .await
                    .map_err(|e| Error::internal("the upload memory budget is closed", e))?
            }
        };
        self.budget.push(permit);
        self.batched += chunk.len();
        self.batch.push(chunk);
        if self.batched >= WRITE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Waits for the batch being written, then starts writing the gathered one.
    async fn flush(&mut self) -> Result<()> {
        self.settle().await?;
        let mut state = self
            .state
            .take()
            .ok_or_else(|| Error::new(Kind::Internal, "writer state lost"))?;
        let batch = std::mem::take(&mut self.batch);
        let budget = std::mem::take(&mut self.budget);
        self.written += std::mem::take(&mut self.batched) as u64;
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            for chunk in &batch {
                state.file.write_all(chunk)?;
                state.sha.update(chunk);
                state.sniffer.feed(chunk);
            }
            drop(budget);
            Ok(state)
        }));
        if self.written - self.flushed_at >= FLUSH_EVERY {
            self.flush_disk().await?;
        }
        Ok(())
    }

    /// Starts an fdatasync of what is written so far, unless one is running; its error is kept.
    async fn flush_disk(&mut self) -> Result<()> {
        if self.flushing.as_ref().is_some_and(|f| !f.is_finished()) {
            return Ok(());
        }
        self.flush_done().await?;
        self.settle().await?;
        let file = self.state.as_ref().and_then(|s| s.file.try_clone().ok());
        if let Some(file) = file {
            self.flushed_at = self.written;
            self.flushing = Some(tokio::task::spawn_blocking(move || file.sync_data()));
        }
        Ok(())
    }

    async fn flush_done(&mut self) -> Result<()> {
        if let Some(f) = self.flushing.take() {
            f.await
                .map_err(|e| Error::internal("the flush thread failed", e))?
                .map_err(storage_error)?;
        }
        Ok(())
    }

    async fn settle(&mut self) -> Result<()> {
        if let Some(job) = self.in_flight.take() {
            let state = job
                .await
                .map_err(|e| Error::internal("the writer thread failed", e))?
                .map_err(storage_error)?;
            self.state = Some(state);
        }
        Ok(())
    }

    /// Writes what is left, fsyncs, and sniffs the format (the ZIP check reads the file back).
    async fn finish(mut self) -> Result<Written> {
        self.flush().await?;
        self.settle().await?;
        self.flush_done().await?;
        let state = self
            .state
            .take()
            .ok_or_else(|| Error::new(Kind::Internal, "writer state lost"))?;
        let done = tokio::task::spawn_blocking(move || {
            let WriteState {
                mut file,
                sha,
                sniffer,
            } = state;
            file.sync_all()?;
            let detected = sniffer.finish(&mut file)?;
            Ok::<_, io::Error>(Written {
                sha256: hex::encode(sha.finish()),
                detected,
            })
        });
        done.await
            .map_err(|e| Error::internal("the writer thread failed", e))?
            .map_err(storage_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two parts share a budget that holds one batch of each only half full: when the budget is
    /// spent, a waiting part writes its own batch, so neither waits for the other forever.
    #[tokio::test]
    async fn parts_waiting_for_the_budget_write_their_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = Arc::new(tokio::sync::Semaphore::new(96));
        let open = |name: &str| std::fs::File::create(dir.path().join(name)).expect("create");
        let mut a = PartWriter::new(open("a"), budget.clone());
        let mut b = PartWriter::new(open("b"), budget.clone());
        let chunk = Bytes::from(vec![7u8; 40 * 1024]);
        let pushes = async {
            for _ in 0..20 {
                tokio::try_join!(a.push(chunk.clone()), b.push(chunk.clone())).expect("push");
            }
        };
        tokio::time::timeout(Duration::from_secs(20), pushes)
            .await
            .expect("the parts waited for each other's budget");
        let (a, b) = tokio::try_join!(a.finish(), b.finish()).expect("finish");
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(
            std::fs::metadata(dir.path().join("a")).expect("a").len(),
            20 * 40 * 1024
        );
    }
}
