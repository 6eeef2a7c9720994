//! Uploads: streaming multipart to disk, format recognition, safe names, and the all-or-nothing commit.

pub mod api;
pub mod formats;
pub mod ingest;
pub mod names;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use dashmap::DashMap;

use crate::db::{Added, FileRecord, Owner};
use crate::error::{Error, Kind, Result};
use crate::gateway::Gateway;
use crate::proxy::unix_now;
use formats::Format;
use ingest::{Ingested, storage_error};
use store::Store;

/// Formats by their config names; names were validated when the config or directive was read.
pub fn formats(names: &[String]) -> Vec<Format> {
    names.iter().filter_map(|n| Format::from_name(n)).collect()
}

/// One lock per session, held while a request's files are committed, so quotas hold under concurrency.
#[derive(Default)]
pub struct SessionLocks {
    locks: DashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>,
}

impl SessionLocks {
    pub async fn lock(self: &Arc<Self>, token: &Arc<str>) -> SessionGuard {
        let lock = self.locks.entry(token.clone()).or_default().clone();
        SessionGuard {
            guard: Some(lock.lock_owned().await),
            token: token.clone(),
            locks: self.clone(),
        }
    }
}

/// A held session lock; the last one out removes the lock from the map, so it does not grow.
pub struct SessionGuard {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    token: Arc<str>,
    locks: Arc<SessionLocks>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        // Only the map's own reference left: nobody holds or waits for this lock.
        self.locks
            .locks
            .remove_if(&self.token, |_, l| Arc::strong_count(l) == 1);
    }
}

/// The most a session may hold, checked again at commit with the index as it is then.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub max_bytes: u64,
    pub max_files: u64,
}

/// Makes every part of a request visible at once, or none: blobs renamed into place and fsynced,
/// then one database transaction; files it replaces are deleted after that commit.
pub fn commit(
    store: &Store,
    owner: &Owner,
    mut ingested: Ingested,
    quota: Option<Quota>,
) -> Result<Vec<FileRecord>> {
    if let (Some(q), Owner::Session { token }) = (quota, owner) {
        let existing = store
            .db
            .session_files(token)
            .map_err(|e| Error::internal("reading the file index", e))?;
        let replaced = |name: &str| ingested.parts.iter().any(|p| p.name == name);
        let kept: Vec<&FileRecord> = existing.iter().filter(|f| !replaced(&f.name)).collect();
        let files = kept.len() as u64 + ingested.parts.len() as u64;
        let bytes = kept.iter().map(|f| f.size).sum::<u64>()
            + ingested.parts.iter().map(|p| p.size).sum::<u64>();
        if files > q.max_files {
            return Err(Error::new(
                Kind::QuotaExceeded,
                format!("the session may hold at most {} files", q.max_files),
            ));
        }
        if bytes > q.max_bytes {
            return Err(Error::new(
                Kind::QuotaExceeded,
                format!("the session may hold at most {} bytes", q.max_bytes),
            ));
        }
    }
    let created = unix_now();
    let mut records = Vec::with_capacity(ingested.parts.len());
    for part in &mut ingested.parts {
        let id = uuid::Uuid::new_v4().to_string();
        if let Err(e) = store.persist(part.temp.path(), &id) {
            records
                .iter()
                .for_each(|r: &FileRecord| store.remove_blob(&r.id));
            return Err(storage_error(e));
        }
        part.temp.disarm();
        records.push(FileRecord {
            id,
            owner: owner.clone(),
            name: part.name.clone(),
            size: part.size,
            content_type: part.format.mime().to_string(),
            format: part.format.name().to_string(),
            sha256: part.sha256.clone(),
            created,
        });
    }
    let added = store.db.add_files(&records);
    if !matches!(added, Ok(Added::Done { .. })) {
        records.iter().for_each(|r| store.remove_blob(&r.id));
    }
    match added {
        Ok(Added::Done { replaced }) => {
            replaced.iter().for_each(|r| store.remove_blob(&r.id));
            Ok(records)
        }
        Ok(Added::SessionGone) => Err(Error::new(
            Kind::InvalidHandle,
            "the upload session ended while the files streamed",
        )),
        Err(e) => Err(Error::internal("writing the file index", e)),
    }
}

/// The `FILE` object of SPEC §5, with a fresh signed URL and the stored reference.
pub fn describe(gw: &Gateway, f: &FileRecord) -> serde_json::Value {
    let expires = unix_now() + gw.config.files.max_url_ttl.as_secs();
    let path = format!(
        "{}/{}/{}",
        gw.config.files.route,
        f.id,
        encode_segment(&f.name)
    );
    serde_json::json!({
        "name": f.name,
        "id": f.id,
        "size": f.size,
        "content_type": f.content_type,
        "sha256": f.sha256,
        "created": humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(f.created)).to_string(),
        "url": gw.secret.sign_url("GET", &path, "", expires),
        "stored": gw.secret.stored_ref(&f.id, &f.name),
    })
}

/// Percent-encodes a file name for one path segment (RFC 3986 unreserved characters stay).
pub fn encode_segment(name: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(name, SEGMENT).to_string()
}
