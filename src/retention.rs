//! Retention (SPEC §9, `upgate gc`): what has outlived its purpose is removed, and counted.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::config::Config;
use crate::db::{DbError, FileRecord, Owner};
use crate::gateway::Gateway;
use crate::handles::Registry;
use crate::proxy::unix_now;
use crate::upload::store::Store;

/// Temp files and unindexed blobs younger than this may belong to an upload in progress.
const GRACE: Duration = Duration::from_secs(3600);

/// What one sweep removed (or, dry, would remove).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub handles: usize,
    pub sessions: usize,
    pub files: usize,
    pub bytes: u64,
    pub temp_files: usize,
    pub orphan_blobs: usize,
    pub used_slots: usize,
}

/// One sweep: expired handles; sessions whose handles have been dead for `retention`, with their
/// files; intercept and slot files past `intercept_retention`; abandoned temp files and blobs that
/// no index entry names; used slots whose signatures have expired anyway.
pub fn sweep(
    store: &Store,
    registry: Option<&Registry>,
    config: &Config,
    now: u64,
    dry_run: bool,
) -> Result<Report, DbError> {
    let mut report = Report {
        dry_run,
        ..Report::default()
    };
    report.handles = expired_handles(store, registry, now, dry_run)?;
    let retention = config.uploads.retention.as_secs();
    let mut doomed: Vec<FileRecord> = Vec::new();
    for (token, session) in store.db.sessions()? {
        let live = match registry {
            Some(r) => r.has_live_handle(&token, now),
            None => store
                .db
                .handles()?
                .iter()
                .any(|(_, h)| h.token == token && h.expires_at > now),
        };
        if live || session.alive_until.saturating_add(retention) > now {
            continue;
        }
        report.sessions += 1;
        let files = if dry_run {
            store.db.session_files(&token)?
        } else {
            remove_session(store, registry, &token)?
        };
        doomed.extend(files);
    }
    let expired: Vec<FileRecord> = store
        .db
        .files()?
        .into_iter()
        .filter(|f| matches!(f.owner, Owner::Intercept { expires_at } if expires_at <= now))
        .collect();
    if !dry_run {
        let ids: Vec<&str> = expired.iter().map(|f| f.id.as_str()).collect();
        store.db.remove_files(&ids)?;
    }
    doomed.extend(expired);
    report.files = doomed.len();
    report.bytes = doomed.iter().map(|f| f.size).sum();
    if !dry_run {
        doomed.iter().for_each(|f| store.remove_blob(&f.id));
        report.used_slots = store.db.prune_slots(now)?;
    }
    report.temp_files = old_temp_files(store, dry_run);
    report.orphan_blobs = orphan_blobs(store, dry_run)?;
    Ok(report)
}

fn expired_handles(
    store: &Store,
    registry: Option<&Registry>,
    now: u64,
    dry_run: bool,
) -> Result<usize, DbError> {
    if let Some(r) = registry {
        // Refreshed expiries first, so that sessions' `alive_until` is current before it is judged.
        r.flush(&store.db, 1)?;
        if !dry_run {
            return r.prune(&store.db, now);
        }
    }
    let expired: Vec<String> = store
        .db
        .handles()?
        .into_iter()
        .filter(|(_, h)| h.expires_at <= now)
        .map(|(k, _)| k)
        .collect();
    if !dry_run {
        store.db.remove_handles(&expired)?;
    }
    Ok(expired.len())
}

fn remove_session(
    store: &Store,
    registry: Option<&Registry>,
    token: &str,
) -> Result<Vec<FileRecord>, DbError> {
    if let Some(r) = registry {
        r.revoke(&store.db, token)?;
    }
    store.db.remove_session(token)
}

fn is_old(path: &std::path::Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > GRACE)
}

fn old_temp_files(store: &Store, dry_run: bool) -> usize {
    let Ok(entries) = std::fs::read_dir(store.temp_dir()) else {
        return 0;
    };
    let mut n = 0;
    for path in entries.flatten().map(|e| e.path()) {
        if is_old(&path) && (dry_run || std::fs::remove_file(&path).is_ok()) {
            n += 1;
        }
    }
    n
}

/// Blobs on disk with no index entry: what a crash between rename and index commit leaves.
fn orphan_blobs(store: &Store, dry_run: bool) -> Result<usize, DbError> {
    let ids = store
        .blob_ids()
        .map_err(|e| DbError::from(format!("listing blobs: {e}")))?;
    let mut n = 0;
    for id in ids {
        if store.db.file(&id)?.is_none() && is_old(&store.blob_path(&id)) {
            if !dry_run {
                store.remove_blob(&id);
            }
            n += 1;
        }
    }
    Ok(n)
}

/// Background care while serving: refreshed handle expiries written every 2 s, live handles and
/// free disk measured; expired handles pruned every minute; a retention sweep every 5 minutes.
/// It ends at shutdown; the last flush comes once the requests have drained ([`last_flush`]).
pub async fn upkeep(live: crate::gateway::Live, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    for round in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::server::stopped(&mut shutdown) => return,
        }
        let gw = live.load_full();
        let done = tokio::task::spawn_blocking(move || care(&gw, round)).await;
        if let Ok(Err(e)) = done {
            tracing::error!(error = %e, "upkeep failed");
        }
    }
}

/// Writes every refreshed expiry not yet written: at shutdown, once no request can refresh one.
pub async fn last_flush(gw: Arc<Gateway>) {
    let done = tokio::task::spawn_blocking(move || gw.registry.flush(&gw.store.db, 1)).await;
    if let Ok(Err(e)) = done {
        tracing::error!(error = %e, "the last flush of handle expiries failed");
    }
}

fn care(gw: &Gateway, round: u64) -> Result<(), DbError> {
    let step = (gw.config.uploads.handle_ttl.as_secs() / 60).max(1);
    gw.registry.flush(&gw.store.db, step)?;
    let now = unix_now();
    if round % 30 == 29 {
        gw.registry.prune(&gw.store.db, now)?;
    }
    if round % 150 == 149 {
        let report = sweep(&gw.store, Some(&gw.registry), &gw.config, now, false)?;
        record(gw, &report);
    }
    gw.metrics
        .handles_live
        .set(i64::try_from(gw.registry.len()).unwrap_or(i64::MAX));
    if let Ok(stat) = rustix::fs::statvfs(gw.store.temp_dir()) {
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        gw.metrics
            .storage_free_bytes
            .set(i64::try_from(free).unwrap_or(i64::MAX));
    }
    Ok(())
}

/// Logs and counts what a sweep removed.
pub fn record(gw: &Gateway, report: &Report) {
    gw.metrics.retention_files.inc_by(report.files as u64);
    gw.metrics.retention_bytes.inc_by(report.bytes);
    if report.files + report.handles + report.temp_files + report.orphan_blobs > 0 {
        tracing::info!(
            handles = report.handles,
            sessions = report.sessions,
            files = report.files,
            bytes = report.bytes,
            temp_files = report.temp_files,
            orphan_blobs = report.orphan_blobs,
            "retention"
        );
    }
}

/// `upgate gc`: through the running gateway's control listener when it answers, else on the
/// storage directly (whose database lock proves no gateway is using it).
pub async fn gc(config: Config, dry_run: bool) -> anyhow::Result<String> {
    let path = format!("/v1/gc{}", if dry_run { "?dry_run=true" } else { "" });
    match crate::control::client::post(&config.control, &path).await {
        Ok((status, body)) if status.is_success() => {
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        Ok((status, body)) => anyhow::bail!(
            "the gateway answered {status}: {}",
            String::from_utf8_lossy(&body)
        ),
        Err(_) => {
            let store = Store::open(&config.storage_root)?;
            let report = tokio::task::spawn_blocking(move || {
                sweep(&store, None, &config, unix_now(), dry_run)
            })
            .await??;
            Ok(serde_json::to_string(&report)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Limits;

    fn config() -> Config {
        let raw =
            crate::config::parse_file("[uploads]\nretention = \"100s\"\nhandle_ttl = \"10s\"")
                .expect("parse");
        Config::from_file(raw, std::path::Path::new("/")).expect("valid")
    }

    fn file(id: &str, owner: Owner) -> FileRecord {
        FileRecord {
            id: id.into(),
            owner,
            name: format!("{id}.txt"),
            size: 10,
            content_type: "text/plain".into(),
            format: "txt".into(),
            sha256: String::new(),
            created: 0,
        }
    }

    #[test]
    fn dead_sessions_and_expired_intercepts_go_live_ones_stay() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        let config = config();
        let registry = Registry::load(&store.db, Duration::from_secs(10), 0).expect("registry");
        registry
            .register(&store.db, "dead", "c", Limits::default(), 0)
            .expect("register");
        registry
            .register(&store.db, "alive", "c", Limits::default(), 0)
            .expect("register");
        let session = |t: &str| Owner::Session { token: t.into() };
        store
            .db
            .add_files(&[
                file("d1", session("dead")),
                file("a1", session("alive")),
                file("i1", Owner::Intercept { expires_at: 50 }),
                file("i2", Owner::Intercept { expires_at: 500 }),
            ])
            .expect("add");
        for id in ["d1", "a1", "i1", "i2"] {
            let p = store.blob_path(id);
            std::fs::create_dir_all(p.parent().expect("shard")).expect("mkdir");
            std::fs::write(&p, b"0123456789").expect("blob");
        }
        // At 105 both handles (expiring at 10) are dead, but only 95 s ago: retention keeps both sessions.
        assert!(
            registry
                .resolve(&registry_handle(&store, "alive"), "c", 5)
                .is_some()
        );
        let r = sweep(&store, Some(&registry), &config, 105, false).expect("sweep");
        assert_eq!(
            (r.sessions, r.files),
            (0, 1),
            "only the expired intercept file: {r:?}"
        );
        // At 116 "dead" (alive until 10) is past retention; "alive" was refreshed to 15 at 5.
        let dry = sweep(&store, Some(&registry), &config, 111, true).expect("dry");
        assert_eq!((dry.sessions, dry.files, dry.bytes), (1, 1, 10), "{dry:?}");
        assert!(store.blob_path("d1").exists(), "a dry run removes nothing");
        let r = sweep(&store, Some(&registry), &config, 111, false).expect("sweep");
        assert_eq!((r.sessions, r.files), (1, 1), "{r:?}");
        assert!(!store.blob_path("d1").exists());
        assert!(store.blob_path("a1").exists() && store.blob_path("i2").exists());
        assert_eq!(store.db.session_files("alive").expect("list").len(), 1);
    }

    fn registry_handle(store: &Store, token: &str) -> String {
        store
            .db
            .handles()
            .expect("handles")
            .into_iter()
            .find(|(_, h)| h.token == token)
            .expect("handle")
            .0
    }
}
