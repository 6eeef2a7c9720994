//! The persistent state (SPEC §9): handles, sessions and the file index in one redb database.
//!
//! redb gives crash-safe, fsynced, copy-on-write transactions in pure Rust; every change that must
//! survive `kill -9` is one transaction, so a crash leaves either the old state or the new.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

/// handle -> [`HandleRecord`] (JSON)
const HANDLES: TableDefinition<&str, &[u8]> = TableDefinition::new("handles");
/// session token -> [`SessionRecord`] (JSON)
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// file id -> [`FileRecord`] (JSON)
const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
/// (session token, file name) -> file id: a session's files by name.
const SESSION_FILES: TableDefinition<(&str, &str), &str> = TableDefinition::new("session_files");
/// slot signature -> its expiry (unix seconds): slots already used.
const USED_SLOTS: TableDefinition<&str, u64> = TableDefinition::new("used_slots");
/// name -> bytes: the gateway's own keys (the handle registry's slot mask).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

#[derive(Debug, thiserror::Error)]
#[error("state database: {0}")]
pub struct DbError(String);

impl From<String> for DbError {
    fn from(s: String) -> Self {
        DbError(s)
    }
}

fn db_err(e: impl std::fmt::Display) -> DbError {
    DbError(e.to_string())
}

pub type Result<T> = std::result::Result<T, DbError>;

/// Runs storage work (whose commits fsync) on the blocking pool, off the async workers.
pub async fn off_thread<T, E>(
    f: impl FnOnce() -> std::result::Result<T, E> + Send + 'static,
) -> crate::error::Result<T>
where
    T: Send + 'static,
    E: Into<crate::error::Error> + Send + 'static,
{
    use crate::error::Error;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal("a storage thread failed", e))?
        .map_err(Into::into)
}

impl From<DbError> for crate::error::Error {
    fn from(e: DbError) -> Self {
        crate::error::Error::internal("the state database", e)
    }
}

/// A live handle: which session of which client it stands for, and until when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HandleRecord {
    pub token: String,
    pub client: String,
    pub expires_at: u64,
}

/// Per-session limits set by the registration; `None` keeps the configured default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct Limits {
    pub accept: Option<Vec<String>>,
    pub max_bytes: Option<u64>,
    pub max_files: Option<u64>,
}

/// An upload session (the upstream's token): its limits and when a handle of it last lived.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    pub limits: Limits,
    pub alive_until: u64,
}

/// Who a stored file belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Owner {
    /// Uploaded through a handle; lives as long as the session's retention.
    Session { token: String },
    /// Stored by an intercepted route or a slot; lives until deleted or `expires_at`.
    Intercept { expires_at: u64 },
}

/// One stored file, as listed (SPEC §5 `FILE`, less the signed fields made when answering).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    pub id: String,
    pub owner: Owner,
    pub name: String,
    pub size: u64,
    pub content_type: String,
    pub format: String,
    pub sha256: String,
    /// Unix seconds.
    pub created: u64,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(db_err)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(db_err)
}

pub struct Db {
    db: Database,
    records: RecordCache,
}

/// File records by id, as last read, in front of a read transaction and a JSON decode: the
/// file routes read the same few records again and again. Every write of the `files` table
/// forgets the ids it touched after its commit, and a record read while any write was
/// forgetting is not kept (`forgotten` counts), so a kept record is never older than the
/// latest commit.
#[derive(Default)]
struct RecordCache(Mutex<Records>);

#[derive(Default)]
struct Records {
    by_id: HashMap<String, Arc<FileRecord>, foldhash::fast::RandomState>,
    forgotten: u64,
}

/// At most this many records are kept (a few hundred KiB); when full, all are dropped.
const CACHED_RECORDS: usize = 1024;

impl RecordCache {
    fn lock(&self) -> MutexGuard<'_, Records> {
        // The map is whole between statements, so a panic elsewhere leaves it usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The kept record, or the `forgotten` count to pass to [`RecordCache::keep`].
    fn get(&self, id: &str) -> std::result::Result<Arc<FileRecord>, u64> {
        let records = self.lock();
        records.by_id.get(id).cloned().ok_or(records.forgotten)
    }

    /// Keeps `record`, read after `get` returned `forgotten`, unless a write forgot since.
    fn keep(&self, record: &Arc<FileRecord>, forgotten: u64) {
        let mut records = self.lock();
        if records.forgotten != forgotten {
            return;
        }
        if records.by_id.len() >= CACHED_RECORDS {
            records.by_id.clear();
        }
        records.by_id.insert(record.id.clone(), Arc::clone(record));
    }

    fn forget<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut records = self.lock();
        records.forgotten = records.forgotten.wrapping_add(1);
        for id in ids {
            records.by_id.remove(id);
        }
    }
}

/// The outcome of [`Db::add_files`].
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// Committed; these records were replaced by name (their blobs are the caller's to delete).
    Done { replaced: Vec<FileRecord> },
    /// A session of the new files has ended: nothing was written.
    SessionGone,
}

/// redb's page cache, bounded (its default is 1 GiB): the state is small, and the gateway's memory
/// should not grow with it.
const CACHE_BYTES: usize = 16 << 20;

impl Db {
    /// Opens (or creates) the database file, making sure every table exists.
    pub fn open(path: &Path) -> Result<Db> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        {
            tx.open_table(HANDLES).map_err(db_err)?;
            tx.open_table(SESSIONS).map_err(db_err)?;
            tx.open_table(FILES).map_err(db_err)?;
            tx.open_table(SESSION_FILES).map_err(db_err)?;
            tx.open_table(USED_SLOTS).map_err(db_err)?;
            tx.open_table(META).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(Db {
            db,
            records: RecordCache::default(),
        })
    }

    /// A key of the handle registry's, by name (the slots' masks): the one stored, or `make`'s,
    /// stored first. Handles name their slots under them, so they must outlive them.
    pub fn registry_key(
        &self,
        name: &str,
        make: impl FnOnce() -> Result<[u8; 16]>,
    ) -> Result<[u8; 16]> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let key = {
            let mut table = tx.open_table(META).map_err(db_err)?;
            let stored = table
                .get(name)
                .map_err(db_err)?
                .and_then(|v| <[u8; 16]>::try_from(v.value()).ok());
            match stored {
                Some(key) => key,
                None => {
                    let key = make()?;
                    table.insert(name, key.as_slice()).map_err(db_err)?;
                    key
                }
            }
        };
        tx.commit().map_err(db_err)?;
        Ok(key)
    }

    /// Every handle record, for loading the registry at start.
    pub fn handles(&self) -> Result<Vec<(String, HandleRecord)>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(HANDLES).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((k.value().to_string(), decode(v.value())?));
        }
        Ok(out)
    }

    pub fn session(&self, token: &str) -> Result<Option<SessionRecord>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(SESSIONS).map_err(db_err)?;
        let row = table.get(token).map_err(db_err)?;
        row.map(|v| decode(v.value())).transpose()
    }

    pub fn sessions(&self) -> Result<Vec<(String, SessionRecord)>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(SESSIONS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((k.value().to_string(), decode(v.value())?));
        }
        Ok(out)
    }

    /// Stores a handle and its session in one durable transaction.
    pub fn put_handle(
        &self,
        handle: &str,
        record: &HandleRecord,
        session: &SessionRecord,
    ) -> Result<()> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            tx.open_table(HANDLES)
                .map_err(db_err)?
                .insert(handle, encode(record)?.as_slice())
                .map_err(db_err)?;
            tx.open_table(SESSIONS)
                .map_err(db_err)?
                .insert(record.token.as_str(), encode(session)?.as_slice())
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Stores a handle registered again, and its session, in one durable transaction, only if
    /// the handle's record is still there; `false` (nothing written) if it was ended meanwhile.
    pub fn renew_handle(
        &self,
        handle: &str,
        record: &HandleRecord,
        session: &SessionRecord,
    ) -> Result<bool> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut handles = tx.open_table(HANDLES).map_err(db_err)?;
            if handles.get(handle).map_err(db_err)?.is_none() {
                return Ok(false);
            }
            handles
                .insert(handle, encode(record)?.as_slice())
                .map_err(db_err)?;
            tx.open_table(SESSIONS)
                .map_err(db_err)?
                .insert(record.token.as_str(), encode(session)?.as_slice())
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(true)
    }

    /// Moves handles' expiry forward (and their sessions' `alive_until`), in one durable
    /// transaction. A handle whose record is gone (ended since the refresh was read) stays gone.
    pub fn refresh_handles(&self, refreshed: &[(String, HandleRecord)]) -> Result<()> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut handles = tx.open_table(HANDLES).map_err(db_err)?;
            let mut sessions = tx.open_table(SESSIONS).map_err(db_err)?;
            for (handle, record) in refreshed {
                if handles.get(handle.as_str()).map_err(db_err)?.is_none() {
                    continue;
                }
                handles
                    .insert(handle.as_str(), encode(record)?.as_slice())
                    .map_err(db_err)?;
                let current = sessions
                    .get(record.token.as_str())
                    .map_err(db_err)?
                    .map(|v| decode::<SessionRecord>(v.value()))
                    .transpose()?;
                let mut session = current.unwrap_or_default();
                if session.alive_until < record.expires_at {
                    session.alive_until = record.expires_at;
                    sessions
                        .insert(record.token.as_str(), encode(&session)?.as_slice())
                        .map_err(db_err)?;
                }
            }
        }
        tx.commit().map_err(db_err)
    }

    pub fn remove_handles(&self, handles: &[String]) -> Result<()> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = tx.open_table(HANDLES).map_err(db_err)?;
            for h in handles {
                table.remove(h.as_str()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// A file record as [`Db::file`] reads it, kept in memory for the next request: what the
    /// file routes use. A record is shared, never changed: a change is a new record.
    pub fn file_shared(&self, id: &str) -> Result<Option<Arc<FileRecord>>> {
        let forgotten = match self.records.get(id) {
            Ok(record) => return Ok(Some(record)),
            Err(forgotten) => forgotten,
        };
        let Some(record) = self.file(id)? else {
            return Ok(None);
        };
        let record = Arc::new(record);
        self.records.keep(&record, forgotten);
        Ok(Some(record))
    }

    /// A file record, read from the database itself.
    pub fn file(&self, id: &str) -> Result<Option<FileRecord>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(FILES).map_err(db_err)?;
        let row = table.get(id).map_err(db_err)?;
        row.map(|v| decode(v.value())).transpose()
    }

    /// A session's files, ordered by name.
    pub fn session_files(&self, token: &str) -> Result<Vec<FileRecord>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let index = tx.open_table(SESSION_FILES).map_err(db_err)?;
        let files = tx.open_table(FILES).map_err(db_err)?;
        let mut out = Vec::new();
        for row in index.range((token, "")..).map_err(db_err)? {
            let (k, id) = row.map_err(db_err)?;
            if k.value().0 != token {
                break;
            }
            if let Some(v) = files.get(id.value()).map_err(db_err)? {
                out.push(decode(v.value())?);
            }
        }
        Ok(out)
    }

    /// Every file record (for retention and the orphan sweep).
    pub fn files(&self) -> Result<Vec<FileRecord>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(FILES).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            out.push(decode(row.map_err(db_err)?.1.value())?);
        }
        Ok(out)
    }

    /// Adds files in one durable transaction; a session file replaces the one of the same name.
    /// Returns the records replaced (their blobs are the caller's to delete, after this commit).
    /// A file of a session that no longer exists (ended while the upload streamed) is refused,
    /// and the transaction with it.
    pub fn add_files(&self, new: &[FileRecord]) -> Result<Added> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let mut replaced = Vec::new();
        {
            let mut files = tx.open_table(FILES).map_err(db_err)?;
            let mut index = tx.open_table(SESSION_FILES).map_err(db_err)?;
            let sessions = tx.open_table(SESSIONS).map_err(db_err)?;
            for f in new {
                if let Owner::Session { token } = &f.owner {
                    if sessions.get(token.as_str()).map_err(db_err)?.is_none() {
                        return Ok(Added::SessionGone);
                    }
                    let old = index
                        .insert((token.as_str(), f.name.as_str()), f.id.as_str())
                        .map_err(db_err)?
                        .map(|g| g.value().to_string());
                    if let Some(old) = old
                        && let Some(v) = files.remove(old.as_str()).map_err(db_err)?
                    {
                        replaced.push(decode(v.value())?);
                    }
                }
                files
                    .insert(f.id.as_str(), encode(f)?.as_slice())
                    .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        let touched = new.iter().chain(&replaced).map(|f| f.id.as_str());
        self.records.forget(touched);
        Ok(Added::Done { replaced })
    }

    /// Removes files by id in one durable transaction; returns those that existed.
    pub fn remove_files(&self, ids: &[&str]) -> Result<Vec<FileRecord>> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let mut removed = Vec::new();
        {
            let mut files = tx.open_table(FILES).map_err(db_err)?;
            let mut index = tx.open_table(SESSION_FILES).map_err(db_err)?;
            for id in ids {
                let Some(v) = files.remove(*id).map_err(db_err)? else {
                    continue;
                };
                let record: FileRecord = decode(v.value())?;
                if let Owner::Session { token } = &record.owner {
                    let current = index
                        .get((token.as_str(), record.name.as_str()))
                        .map_err(db_err)?
                        .map(|g| g.value() == *id);
                    if current == Some(true) {
                        index
                            .remove((token.as_str(), record.name.as_str()))
                            .map_err(db_err)?;
                    }
                }
                removed.push(record);
            }
        }
        tx.commit().map_err(db_err)?;
        self.records.forget(ids.iter().copied());
        Ok(removed)
    }

    /// Ends a session: its record, handles and files, in one durable transaction. Returns its files.
    pub fn remove_session(&self, token: &str) -> Result<Vec<FileRecord>> {
        // Read and removed in one write transaction, so a commit cannot slip in between.
        let tx = self.db.begin_write().map_err(db_err)?;
        let mut removed: Vec<FileRecord> = Vec::new();
        {
            let mut file_table = tx.open_table(FILES).map_err(db_err)?;
            let mut index = tx.open_table(SESSION_FILES).map_err(db_err)?;
            let entries: Vec<(String, String)> = index
                .range((token, "")..)
                .map_err(db_err)?
                .map_while(|row| row.ok())
                .map(|(k, id)| {
                    (
                        k.value().0.to_string(),
                        k.value().1.to_string(),
                        id.value().to_string(),
                    )
                })
                .take_while(|(t, _, _)| t == token)
                .map(|(_, name, id)| (name, id))
                .collect();
            for (name, id) in &entries {
                if let Some(v) = file_table.remove(id.as_str()).map_err(db_err)? {
                    removed.push(decode(v.value())?);
                }
                index.remove((token, name.as_str())).map_err(db_err)?;
            }
            let mut handle_table = tx.open_table(HANDLES).map_err(db_err)?;
            let handles: Vec<String> = handle_table
                .iter()
                .map_err(db_err)?
                .map_while(|row| row.ok())
                .filter_map(|(k, v)| {
                    decode::<HandleRecord>(v.value())
                        .ok()
                        .filter(|r| r.token == token)
                        .map(|_| k.value().to_string())
                })
                .collect();
            for h in &handles {
                handle_table.remove(h.as_str()).map_err(db_err)?;
            }
            tx.open_table(SESSIONS)
                .map_err(db_err)?
                .remove(token)
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        self.records.forget(removed.iter().map(|f| f.id.as_str()));
        Ok(removed)
    }

    /// Marks a slot used; false if it already was (SPEC §6: single use, across restarts).
    pub fn use_slot(&self, sig: &str, expires_at: u64) -> Result<bool> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let fresh = {
            let mut table = tx.open_table(USED_SLOTS).map_err(db_err)?;
            let seen = table.get(sig).map_err(db_err)?.is_some();
            if !seen {
                table.insert(sig, expires_at).map_err(db_err)?;
            }
            !seen
        };
        tx.commit().map_err(db_err)?;
        Ok(fresh)
    }

    /// Forgets used slots whose signatures have expired anyway; returns how many.
    pub fn prune_slots(&self, now: u64) -> Result<usize> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let n = {
            let mut table = tx.open_table(USED_SLOTS).map_err(db_err)?;
            let before = table.len().map_err(db_err)?;
            table.retain(|_, expires| expires >= now).map_err(db_err)?;
            before - table.len().map_err(db_err)?
        };
        tx.commit().map_err(db_err)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: &str, token: &str, name: &str) -> FileRecord {
        FileRecord {
            id: id.into(),
            owner: Owner::Session {
                token: token.into(),
            },
            name: name.into(),
            size: 3,
            content_type: "text/plain".into(),
            format: "txt".into(),
            sha256: "00".into(),
            created: 1,
        }
    }

    #[test]
    fn files_by_session_replace_and_remove() {
        let dir = tempfile::tempdir().expect("dir");
        let db = Db::open(&dir.path().join("state.redb")).expect("open");
        assert_eq!(
            db.add_files(&[file("0", "t", "a.txt")]).expect("add"),
            Added::SessionGone
        );
        for t in ["t", "u"] {
            let h = HandleRecord {
                token: t.into(),
                client: "c".into(),
                expires_at: 10,
            };
            db.put_handle(&format!("h-{t}"), &h, &SessionRecord::default())
                .expect("session");
        }
        let none = Added::Done {
            replaced: Vec::new(),
        };
        let three = [
            file("1", "t", "a.txt"),
            file("2", "t", "b.txt"),
            file("3", "u", "a.txt"),
        ];
        assert_eq!(db.add_files(&three).expect("add"), none);
        let replaced = db.add_files(&[file("4", "t", "a.txt")]).expect("replace");
        assert_eq!(
            replaced,
            Added::Done {
                replaced: vec![file("1", "t", "a.txt")]
            }
        );
        let names: Vec<_> = db
            .session_files("t")
            .expect("list")
            .into_iter()
            .map(|f| (f.name, f.id))
            .collect();
        assert_eq!(
            names,
            [
                ("a.txt".to_string(), "4".to_string()),
                ("b.txt".into(), "2".into())
            ]
        );
        assert_eq!(db.remove_files(&["2", "nope"]).expect("remove").len(), 1);
        assert_eq!(db.session_files("t").expect("list").len(), 1);
        assert_eq!(db.remove_session("t").expect("end").len(), 1);
        assert!(db.session_files("t").expect("list").is_empty());
        assert_eq!(
            db.session_files("u").expect("list").len(),
            1,
            "other sessions untouched"
        );
    }

    #[test]
    fn kept_records_go_with_every_write_of_them() {
        let dir = tempfile::tempdir().expect("dir");
        let db = Db::open(&dir.path().join("state.redb")).expect("open");
        let h = HandleRecord {
            token: "t".into(),
            client: "c".into(),
            expires_at: 10,
        };
        db.put_handle("h", &h, &SessionRecord::default())
            .expect("session");
        let shared = |id: &str| db.file_shared(id).expect("read").map(|r| (*r).clone());
        db.add_files(&[file("1", "t", "a.txt"), file("2", "t", "b.txt")])
            .expect("add");
        assert_eq!(shared("1"), Some(file("1", "t", "a.txt")));
        assert_eq!(shared("1"), Some(file("1", "t", "a.txt")), "kept");
        assert_eq!(shared("2"), Some(file("2", "t", "b.txt")));
        assert_eq!(shared("9"), None);
        db.add_files(&[file("3", "t", "a.txt")]).expect("replace");
        assert_eq!(shared("1"), None, "replaced by name");
        assert_eq!(shared("3"), Some(file("3", "t", "a.txt")));
        db.remove_files(&["2"]).expect("remove");
        assert_eq!(shared("2"), None, "removed");
        db.remove_session("t").expect("end");
        assert_eq!(shared("3"), None, "its session ended");
    }

    #[test]
    fn a_record_read_across_a_write_is_not_kept() {
        let cache = RecordCache::default();
        let record = Arc::new(file("1", "t", "a.txt"));
        let forgotten = cache.get("1").expect_err("empty");
        cache.forget(["1"]);
        cache.keep(&record, forgotten);
        let forgotten = cache
            .get("1")
            .expect_err("not kept: it may predate the write");
        cache.keep(&record, forgotten);
        assert_eq!(cache.get("1").ok(), Some(record));
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("state.redb");
        {
            let db = Db::open(&path).expect("open");
            let h = HandleRecord {
                token: "t".into(),
                client: "c".into(),
                expires_at: 10,
            };
            db.put_handle(
                "h1",
                &h,
                &SessionRecord {
                    limits: Limits::default(),
                    alive_until: 10,
                },
            )
            .expect("put");
            db.refresh_handles(&[(
                "h1".into(),
                HandleRecord {
                    expires_at: 20,
                    ..h
                },
            )])
            .expect("refresh");
            assert!(db.use_slot("sig", 100).expect("slot"));
        }
        let db = Db::open(&path).expect("reopen");
        assert_eq!(db.handles().expect("handles")[0].1.expires_at, 20);
        assert_eq!(
            db.session("t")
                .expect("session")
                .expect("exists")
                .alive_until,
            20
        );
        assert!(
            !db.use_slot("sig", 100).expect("slot"),
            "a used slot stays used"
        );
        assert_eq!(db.prune_slots(101).expect("prune"), 1);
    }

    /// A refresh read before a handle ended does not write it back, and a renewal of an ended
    /// handle writes nothing: an ended handle's record stays gone.
    #[test]
    fn ended_handles_stay_ended() {
        let dir = tempfile::tempdir().expect("dir");
        let db = Db::open(&dir.path().join("s.redb")).expect("db");
        let record = HandleRecord {
            token: "tok".into(),
            client: "c".into(),
            expires_at: 100,
        };
        let session = SessionRecord::default();
        db.put_handle("h", &record, &session).expect("put");
        assert!(db.renew_handle("h", &record, &session).expect("renew"));
        db.remove_handles(&["h".to_string()]).expect("remove");
        db.refresh_handles(&[("h".to_string(), record.clone())])
            .expect("refresh");
        assert!(!db.renew_handle("h", &record, &session).expect("renew"));
        assert!(db.handles().expect("handles").is_empty());
    }
}
