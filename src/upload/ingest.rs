//! Streaming a multipart body to disk: each file part into a temp file, hashed, sniffed and bounded
//! while it streams; nothing is kept unless every part passes (the caller commits).

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::PathBuf;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyDataStream;
use tokio::sync::mpsc;

use super::formats::{self, Detected, Format, Sniffer};
use super::names;
use super::store::Store;
use crate::body::Body;
use crate::error::{Error, Kind, Result};

/// The most a text field may hold, and all text fields together (they are kept in memory).
const MAX_FIELD_BYTES: usize = 64 * 1024;
const MAX_FIELDS_BYTES: usize = 1024 * 1024;
/// Chunks in flight between the network and the writer thread: the back-pressure window.
const WRITE_QUEUE: usize = 16;

/// What a request may store.
#[derive(Debug, Clone)]
pub struct Policy {
    pub accept: Vec<Format>,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
    pub max_files: u64,
    /// Names already stored in the session, with their sizes (a same-named upload replaces one).
    pub existing: HashMap<String, u64>,
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
    let mut multipart = multer::Multipart::new(BodyDataStream::new(body), boundary);
    let mut out = Ingested::default();
    let mut total = 0u64;
    let mut fields_bytes = 0usize;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let field_name = field.name().unwrap_or("").to_string();
        match field.file_name().map(str::to_string) {
            // A file input left empty is sent with an empty filename and no content.
            Some(raw) if raw.is_empty() => drain(field).await?,
            Some(raw) => {
                let part =
                    file_part(store, field, field_name, &raw, policy, &mut total, &out).await?;
                out.parts.push(part);
            }
            None => {
                let text = text_field(field, &mut fields_bytes).await?;
                out.fields.push((field_name, text));
            }
        }
    }
    if out.parts.is_empty() {
        return Err(Error::new(Kind::BadRequest, "no file part in the request"));
    }
    Ok(out)
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

async fn drain(mut field: multer::Field<'_>) -> Result<()> {
    while field.chunk().await.map_err(multipart_error)?.is_some() {}
    Ok(())
}

async fn text_field(mut field: multer::Field<'_>, used: &mut usize) -> Result<String> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        buf.extend_from_slice(&chunk);
        *used += chunk.len();
        if buf.len() > MAX_FIELD_BYTES || *used > MAX_FIELDS_BYTES {
            return Err(Error::new(Kind::BadRequest, "a text field is too long"));
        }
    }
    String::from_utf8(buf).map_err(|_| Error::new(Kind::BadRequest, "a text field is not UTF-8"))
}

async fn file_part(
    store: &Store,
    mut field: multer::Field<'_>,
    field_name: String,
    raw_name: &str,
    policy: &Policy,
    total: &mut u64,
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
    let mut temp = TempFile { path: None };
    let path = store.temp_path();
    let file = std::fs::File::create_new(&path).map_err(storage_error)?;
    temp.path = Some(path);
    let (tx, rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    let writer = tokio::task::spawn_blocking(move || write_part(file, rx));
    let room = policy.room_bytes() + replaced_so_far(policy, so_far) + replaced;
    let mut size = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        size += chunk.len() as u64;
        if size > policy.max_file_bytes {
            return Err(Error::new(
                Kind::TooLarge,
                format!("{name:?} is larger than {} bytes", policy.max_file_bytes),
            ));
        }
        *total += chunk.len() as u64;
        if *total > room {
            return Err(Error::new(
                Kind::QuotaExceeded,
                "the session's byte quota would be passed",
            ));
        }
        if tx.send(chunk).await.is_err() {
            break; // the writer failed; its error is read below
        }
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| Error::internal("the writer thread failed", e))?
        .map_err(storage_error)?;
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

/// The writer thread: buffered writes, SHA-256 and format sniffing as the bytes pass, then fsync.
fn write_part(file: std::fs::File, mut rx: mpsc::Receiver<Bytes>) -> io::Result<Written> {
    let mut out = io::BufWriter::with_capacity(1 << 20, file);
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut sniffer = Sniffer::new();
    while let Some(chunk) = rx.blocking_recv() {
        out.write_all(&chunk)?;
        sha.update(&chunk);
        sniffer.feed(&chunk);
    }
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let detected = sniffer.finish(&mut file)?;
    Ok(Written {
        sha256: hex::encode(sha.finish()),
        detected,
    })
}
