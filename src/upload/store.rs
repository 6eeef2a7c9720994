//! Files on disk (SPEC §9): finished blobs by id, a temp area on the same filesystem, and the state database.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::db::Db;

/// The storage root's layout: `files/<2 hex>/<id>`, `tmp/`, `state/upgate.redb`.
pub struct Store {
    files: PathBuf,
    tmp: PathBuf,
    pub db: Db,
    /// Upload bytes read from clients and not yet written, all uploads together, in KiB: what
    /// keeps many slow-disk uploads from piling up in memory (the rest waits in socket buffers).
    pub in_flight: std::sync::Arc<tokio::sync::Semaphore>,
}

/// The most upload data held in memory at once, in KiB. A held chunk may keep a larger buffer
/// of hyper's or multer's alive, so the memory this stands for is a few times more: with 500
/// parallel uploads, 32 MiB here came to 130–190 MiB of resident memory, 16 MiB to 95–115,
/// at the same aggregate speed (bench/run, section 3).
pub const IN_FLIGHT_KIB: u32 = 16 * 1024;

impl Store {
    /// Creates the layout if needed, empties the temp area (leftovers of a crash), opens the state.
    pub fn open(root: &Path) -> anyhow::Result<Store> {
        use anyhow::Context;
        let files = root.join("files");
        let tmp = root.join("tmp");
        let state = root.join("state");
        for dir in [&files, &tmp, &state] {
            fs::create_dir_all(dir)
                .with_context(|| format!("storage.root: cannot create {}", dir.display()))?;
        }
        // The database first: its lock proves no other upgate uses this root, whose temp files it would take.
        let db = Db::open(&state.join("upgate.redb"))
            .context("storage.root: opening the state database")?;
        let mut removed = 0u64;
        for entry in fs::read_dir(&tmp)
            .with_context(|| format!("storage.root: cannot read {}", tmp.display()))?
        {
            let path = entry?.path();
            if fs::remove_file(&path)
                .or_else(|_| fs::remove_dir_all(&path))
                .is_ok()
            {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "emptied the temp area");
        }
        let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_KIB as usize));
        Ok(Store {
            files,
            tmp,
            db,
            in_flight,
        })
    }

    /// Where the finished file of `id` lives. Ids are UUIDs made by upgate, never client input.
    pub fn blob_path(&self, id: &str) -> PathBuf {
        let shard = id.get(..2).unwrap_or("xx");
        // Sized at once: `join` would grow the path twice (every file request builds one).
        let mut path = PathBuf::with_capacity(self.files.as_os_str().len() + id.len() + 4);
        path.push(&self.files);
        path.push(shard);
        path.push(id);
        path
    }

    /// A fresh temp file path, on the same filesystem as the blobs so that rename is atomic.
    pub fn temp_path(&self) -> PathBuf {
        self.tmp.join(uuid::Uuid::new_v4().to_string())
    }

    /// Makes a fully written, fsynced temp file the blob of `id`: rename, then fsync the folder.
    pub fn persist(&self, temp: &Path, id: &str) -> io::Result<()> {
        let target = self.blob_path(id);
        let dir = target.parent().unwrap_or(&self.files);
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            // A new shard's own entry must be durable too, or a power cut can lose it.
            fs::File::open(&self.files)?.sync_all()?;
        }
        fs::rename(temp, &target)?;
        fs::File::open(dir)?.sync_all()
    }

    /// Removes a blob; a missing one is not an error.
    pub fn remove_blob(&self, id: &str) {
        let path = self.blob_path(id);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a file");
        }
    }

    /// Every blob id on disk (for the orphan sweep).
    pub fn blob_ids(&self) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for shard in fs::read_dir(&self.files)? {
            for entry in fs::read_dir(shard?.path())? {
                if let Some(name) = entry?.file_name().to_str() {
                    ids.push(name.to_string());
                }
            }
        }
        Ok(ids)
    }

    pub fn temp_dir(&self) -> &Path {
        &self.tmp
    }
}
