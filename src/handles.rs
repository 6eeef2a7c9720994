//! The handle registry (SPEC §4): opaque handles bound to one client and one upstream session,
//! sliding expiry, kept in memory for the request path and in the state database for restarts.
//!
//! The request path only resolves, so the table is laid out for that: a handle is its 16 random
//! bytes (not its 22-character text), the client key sits inline in the entry, the session's token
//! and its limits are shared `Arc`s (limits interned, since most sessions share a few policies), and
//! expiries are 32-bit seconds. A resolve is one lookup in one map, with no allocation. Both maps
//! keep their entries densely in arrays behind an index of 8-byte slots ([`table`]), so a handle
//! costs about 235 bytes (in its own session) whatever the tables' load, where entries kept in
//! the buckets cost 340 just past a doubling; the price is one more load from memory a resolve.

mod table;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use smallvec::SmallVec;

use crate::db::{Db, DbError, HandleRecord, Limits, SessionRecord};
use table::{Keyed, Table};

/// What a valid handle resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub token: Arc<str>,
    /// Shared by every session registered with the same limits.
    pub limits: Arc<Limits>,
}

/// A handle's 128 random bits; clients hold them as 22 base64url characters.
type Key = [u8; 16];

/// The bits of a handle's text; `None` for anything upgate cannot have issued (the base64url
/// decoder refuses non-canonical text, so one handle has exactly one spelling).
fn key(handle: &str) -> Option<Key> {
    if handle.len() != 22 {
        return None;
    }
    let mut out = [0u8; 18];
    match URL_SAFE_NO_PAD.decode_slice(handle, &mut out) {
        Ok(16) => {
            let mut key = [0u8; 16];
            key.copy_from_slice(&out[..16]);
            Some(key)
        }
        _ => None,
    }
}

fn text(key: &Key) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// Unix seconds as kept in memory: 32 bits last until 2106; later times are clamped.
fn secs(t: u64) -> u32 {
    u32::try_from(t).unwrap_or(u32::MAX)
}

/// A client key (SPEC §2: 22 base64url characters) inline: its bytes, zero-padded, and its length
/// in the last byte. Longer keys are not client keys and are refused.
#[derive(Clone, Copy, PartialEq, Eq)]
struct ClientKey([u8; 24]);

impl ClientKey {
    const MAX: usize = 23;

    fn new(client: &str) -> Option<ClientKey> {
        let b = client.as_bytes();
        if b.len() > Self::MAX {
            return None;
        }
        let mut k = [0u8; 24];
        k[..b.len()].copy_from_slice(b);
        k[Self::MAX] = b.len() as u8;
        Some(ClientKey(k))
    }

    fn as_str(&self) -> &str {
        let len = usize::from(self.0[Self::MAX]).min(Self::MAX);
        std::str::from_utf8(&self.0[..len]).unwrap_or_default()
    }

    fn words(&self) -> [u64; 3] {
        let mut w = [0u64; 3];
        for (w, c) in w.iter_mut().zip(self.0.chunks_exact(8)) {
            *w = u64::from_ne_bytes(c.try_into().unwrap_or_default());
        }
        w
    }

    /// Equality that takes the same time wherever the keys differ: the three words are XORed and
    /// ORed together, with no early exit.
    fn same(&self, other: &ClientKey) -> bool {
        let (a, b) = (self.words(), other.words());
        std::hint::black_box((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2])) == 0
    }
}

struct Entry {
    key: Key,
    token: Arc<str>,
    limits: Arc<Limits>,
    client: ClientKey,
    expires_at: AtomicU32,
    /// The expiry last written to the database; refreshes are flushed in batches.
    persisted: AtomicU32,
}

/// A session token: its limits and its handles (usually one), for re-registration, limit changes
/// and revocation without scanning every handle.
struct SessionEntry {
    /// The one `Arc<str>` every entry of the token shares.
    token: Arc<str>,
    limits: Arc<Limits>,
    handles: SmallVec<[Key; 1]>,
}

impl Keyed for Entry {
    type Key = Key;
    fn key(&self) -> &Key {
        &self.key
    }
}

impl Keyed for SessionEntry {
    type Key = str;
    fn key(&self) -> &str {
        &self.token
    }
}

pub struct Registry {
    live: Table<Entry>,
    /// Locked before `live` where both are.
    sessions: Table<SessionEntry>,
    /// Each distinct `Limits` once; pruned of those no session holds.
    interned: Mutex<HashSet<Arc<Limits>>>,
    ttl_secs: AtomicU64,
    rng: SystemRandom,
}

impl Registry {
    /// An empty registry whose handles live `ttl` after their last resolve.
    pub fn new(ttl: Duration) -> Registry {
        Registry {
            live: Table::new(),
            sessions: Table::new(),
            interned: Mutex::default(),
            ttl_secs: AtomicU64::new(ttl.as_secs().max(1)),
            rng: SystemRandom::new(),
        }
    }

    /// Loads the live handles of the database.
    pub fn load(db: &Db, ttl: Duration, now: u64) -> Result<Registry, DbError> {
        let registry = Registry::new(ttl);
        for (token, session) in db.sessions()? {
            registry.restore_session(&token, session.limits);
        }
        for (handle, record) in db.handles()? {
            if record.expires_at > now {
                registry.restore_handle(&handle, &record);
            }
        }
        Ok(registry)
    }

    /// Takes in a session's limits as stored, without writing them (what loading does).
    pub fn restore_session(&self, token: &str, limits: Limits) {
        self.set_limits(token, self.intern(limits));
    }

    /// Takes in a handle as stored, without writing it (what loading does). A record upgate could
    /// not have written (a malformed handle or client key) is skipped.
    pub fn restore_handle(&self, handle: &str, record: &HandleRecord) {
        match (key(handle), ClientKey::new(&record.client)) {
            (Some(key), Some(client)) => self.insert(key, &record.token, client, record.expires_at),
            _ => tracing::warn!("a malformed handle record in the state database is ignored"),
        }
    }

    fn intern(&self, limits: Limits) -> Arc<Limits> {
        let mut set = self.interned.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = set.get(&limits) {
            return shared.clone();
        }
        let shared = Arc::new(limits);
        set.insert(shared.clone());
        shared
    }

    /// Sets a token's limits, for its live handles too.
    fn set_limits(&self, token: &str, limits: Arc<Limits>) {
        let made = || SessionEntry {
            token: token.into(),
            limits: limits.clone(),
            handles: SmallVec::new(),
        };
        self.sessions.upsert(token, made, |session| {
            if Arc::ptr_eq(&session.limits, &limits) {
                return;
            }
            session.limits = limits.clone();
            for h in &session.handles {
                self.live.update(h, |e| e.limits = limits.clone());
            }
        });
    }

    fn insert(&self, key: Key, token: &str, client: ClientKey, expires_at: u64) {
        let made = || SessionEntry {
            token: token.into(),
            limits: self.intern(Limits::default()),
            handles: SmallVec::new(),
        };
        let (token, limits) = self.sessions.upsert(token, made, |session| {
            if !session.handles.contains(&key) {
                session.handles.push(key);
            }
            (session.token.clone(), session.limits.clone())
        });
        self.live.insert(Entry {
            key,
            token,
            limits,
            client,
            expires_at: AtomicU32::new(secs(expires_at)),
            persisted: AtomicU32::new(secs(expires_at)),
        });
    }

    /// A new `handle_ttl` (config reload); it applies from each handle's next refresh.
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_secs.store(ttl.as_secs().max(1), Ordering::Relaxed);
    }

    fn ttl(&self) -> u64 {
        self.ttl_secs.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers `token` for `client` (or refreshes its live handle) and sets the session's limits.
    /// Returns the handle and its expiry (unix seconds). Durable before it returns.
    pub fn register(
        &self,
        db: &Db,
        token: &str,
        client: &str,
        limits: Limits,
        now: u64,
    ) -> Result<(String, u64), DbError> {
        let ck = ClientKey::new(client)
            .ok_or_else(|| DbError::from("not a client key: too long".to_string()))?;
        let expires_at = now + self.ttl();
        let existing = self.live_handle(token, &ck, now);
        let key = match existing {
            Some(k) => k,
            None => self.new_key()?,
        };
        let handle = text(&key);
        let record = HandleRecord {
            token: token.into(),
            client: client.into(),
            expires_at,
        };
        db.put_handle(
            &handle,
            &record,
            &SessionRecord {
                limits: limits.clone(),
                alive_until: expires_at,
            },
        )?;
        self.set_limits(token, self.intern(limits));
        self.insert(key, token, ck, expires_at);
        Ok((handle, expires_at))
    }

    /// The live handle of `token` for `client`, if there is one.
    fn live_handle(&self, token: &str, client: &ClientKey, now: u64) -> Option<Key> {
        let handles = self.sessions.get(token, |s| s.handles.clone())?;
        handles.into_iter().find(|h| {
            self.live
                .get(h, |e| {
                    e.client.same(client) && e.expires_at.load(Ordering::Acquire) > secs(now)
                })
                .unwrap_or(false)
        })
    }

    fn new_key(&self) -> Result<Key, DbError> {
        let mut key = [0u8; 16];
        self.rng
            .fill(&mut key)
            .map_err(|_| DbError::from("no system randomness".to_string()))?;
        Ok(key)
    }

    /// The session of a handle presented by `client`, refreshing its expiry; `None` for an unknown,
    /// expired or other client's handle alike.
    pub fn resolve(&self, handle: &str, client: &str, now: u64) -> Option<Session> {
        let (key, client) = (key(handle)?, ClientKey::new(client)?);
        let expires_at = secs(now + self.ttl());
        self.live
            .get(&key, |entry| {
                let same_client = entry.client.same(&client);
                let live = entry.expires_at.load(Ordering::Acquire) > secs(now);
                if !(same_client & live) {
                    return None;
                }
                entry.expires_at.store(expires_at, Ordering::Release);
                Some(Session {
                    token: entry.token.clone(),
                    limits: entry.limits.clone(),
                })
            })
            .flatten()
    }

    /// Ends every handle of `token`; returns how many.
    pub fn revoke(&self, db: &Db, token: &str) -> Result<usize, DbError> {
        let ended: SmallVec<[Key; 1]> = self
            .sessions
            .update(token, |s| std::mem::take(&mut s.handles))
            .unwrap_or_default();
        for h in &ended {
            self.live.remove(h);
        }
        db.remove_handles(&ended.iter().map(text).collect::<Vec<_>>())?;
        Ok(ended.len())
    }

    /// Forgets the limits of an ended session (its handles are revoked separately); a session
    /// that still has handles keeps its entry.
    pub fn forget_session(&self, token: &str) {
        self.sessions.remove_if(token, |s| s.handles.is_empty());
    }

    /// Writes refreshed expiries older in the database than `step` seconds; called in the background.
    pub fn flush(&self, db: &Db, step: u64) -> Result<usize, DbError> {
        let mut refreshed = Vec::new();
        self.live.for_each(|e| {
            let expires = e.expires_at.load(Ordering::Acquire);
            if u64::from(expires) >= u64::from(e.persisted.load(Ordering::Acquire)) + step {
                let record = HandleRecord {
                    token: e.token.to_string(),
                    client: e.client.as_str().to_string(),
                    expires_at: u64::from(expires),
                };
                refreshed.push((text(&e.key), record));
            }
        });
        if refreshed.is_empty() {
            return Ok(0);
        }
        db.refresh_handles(&refreshed)?;
        for (handle, record) in &refreshed {
            if let Some(k) = key(handle) {
                self.live.get(&k, |e| {
                    e.persisted
                        .fetch_max(secs(record.expires_at), Ordering::AcqRel)
                });
            }
        }
        Ok(refreshed.len())
    }

    /// Removes expired handles from memory and the database; returns how many.
    pub fn prune(&self, db: &Db, now: u64) -> Result<usize, DbError> {
        let mut ended = Vec::new();
        self.live.retain(|e| {
            let live = e.expires_at.load(Ordering::Acquire) > secs(now);
            if !live {
                ended.push(text(&e.key));
            }
            live
        });
        self.sessions.retain(|s| {
            s.handles.retain(|h| self.live.contains(h));
            true
        });
        self.interned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|l| Arc::strong_count(l) > 1);
        db.remove_handles(&ended)?;
        Ok(ended.len())
    }

    /// Whether any live handle stands for `token`.
    pub fn has_live_handle(&self, token: &str, now: u64) -> bool {
        let Some(handles) = self.sessions.get(token, |s| s.handles.clone()) else {
            return false;
        };
        handles.iter().any(|h| {
            self.live
                .get(h, |e| e.expires_at.load(Ordering::Acquire) > secs(now))
                .unwrap_or(false)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Db, Registry) {
        let dir = tempfile::tempdir().expect("dir");
        let db = Db::open(&dir.path().join("s.redb")).expect("db");
        let reg = Registry::load(&db, Duration::from_secs(100), 0).expect("load");
        (dir, db, reg)
    }

    #[test]
    fn handles_are_opaque_bound_and_stable() {
        let (_d, db, reg) = setup();
        let (h, exp) = reg
            .register(&db, "tok", "alice", Limits::default(), 1000)
            .expect("register");
        assert_eq!(exp, 1100);
        assert!(h.len() >= 22 && !h.contains("tok"));
        let (again, _) = reg
            .register(&db, "tok", "alice", Limits::default(), 1010)
            .expect("again");
        assert_eq!(h, again, "same handle for the same token and client");
        let (other, _) = reg
            .register(&db, "tok", "bob", Limits::default(), 1010)
            .expect("bob");
        assert_ne!(h, other);
        assert_eq!(
            reg.resolve(&h, "alice", 1020)
                .expect("valid")
                .token
                .as_ref(),
            "tok"
        );
        assert!(
            reg.resolve(&h, "bob", 1020).is_none(),
            "another client's handle"
        );
        assert!(reg.resolve("nope", "alice", 1020).is_none());
    }

    #[test]
    fn expiry_slides_on_resolve() {
        let (_d, db, reg) = setup();
        let (h, _) = reg
            .register(&db, "tok", "c", Limits::default(), 0)
            .expect("register");
        assert!(reg.resolve(&h, "c", 90).is_some());
        assert!(
            reg.resolve(&h, "c", 180).is_some(),
            "refreshed at 90 to 190"
        );
        assert!(reg.resolve(&h, "c", 281).is_none(), "expired at 280");
        assert_eq!(reg.prune(&db, 281).expect("prune"), 1);
        assert!(reg.is_empty());
    }

    #[test]
    fn revoke_and_reload() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.redb");
        let (h1, h2);
        {
            let db = Db::open(&path).expect("db");
            let reg = Registry::load(&db, Duration::from_secs(100), 0).expect("load");
            let limits = Limits {
                max_files: Some(3),
                ..Limits::default()
            };
            h1 = reg.register(&db, "keep", "c", limits, 0).expect("r").0;
            h2 = reg
                .register(&db, "drop", "c", Limits::default(), 0)
                .expect("r")
                .0;
            assert!(reg.resolve(&h1, "c", 50).is_some());
            assert_eq!(reg.flush(&db, 10).expect("flush"), 1);
            assert_eq!(reg.revoke(&db, "drop").expect("revoke"), 1);
        }
        let db = Db::open(&path).expect("db");
        let reg = Registry::load(&db, Duration::from_secs(100), 120).expect("reload");
        let s = reg
            .resolve(&h1, "c", 120)
            .expect("the refreshed expiry (150) survived");
        assert_eq!(s.limits.max_files, Some(3));
        assert!(reg.resolve(&h2, "c", 1).is_none());
    }

    #[test]
    fn client_keys_compare_whole() {
        let k = |s| ClientKey::new(s).expect("short enough");
        assert!(k("abc").same(&k("abc")));
        assert!(!k("abc").same(&k("abd")));
        assert!(!k("abc").same(&k("abcd")));
        assert!(!k("").same(&k("\0")), "the length is part of the key");
        assert_eq!(
            k("Zm9vYmFyYmF6cXV4cXV1eA").as_str(),
            "Zm9vYmFyYmF6cXV4cXV1eA"
        );
        assert!(ClientKey::new(&"x".repeat(24)).is_none());
    }

    #[test]
    fn only_canonical_handles_resolve() {
        let (_d, db, reg) = setup();
        let (h, _) = reg
            .register(&db, "tok", "c", Limits::default(), 0)
            .expect("register");
        assert!(key(&h).is_some());
        for bad in [
            "",
            "short",
            &format!("{h}A"),
            &h[..21],
            &h.replace(|_: char| true, "*"),
        ] {
            assert!(reg.resolve(bad, "c", 1).is_none(), "{bad:?}");
        }
        // The same 128 bits with different trailing bits in the last character are not the handle.
        let last = h.chars().last().expect("last");
        let alias = format!("{}{}", &h[..21], if last == 'A' { 'B' } else { 'A' });
        assert!(reg.resolve(&alias, "c", 1).is_none());
        assert!(
            reg.register(&db, "tok", &"c".repeat(40), Limits::default(), 0)
                .is_err()
        );
    }

    #[test]
    fn limits_follow_every_handle_of_a_session() {
        let (_d, db, reg) = setup();
        let three = Limits {
            max_files: Some(3),
            ..Limits::default()
        };
        let (a, _) = reg
            .register(&db, "tok", "alice", three.clone(), 0)
            .expect("a");
        let (b, _) = reg
            .register(&db, "tok", "bob", Limits::default(), 0)
            .expect("b");
        assert_eq!(
            reg.resolve(&a, "alice", 1).expect("a").limits.max_files,
            None
        );
        let (again, _) = reg.register(&db, "tok", "alice", three, 2).expect("again");
        assert_eq!(again, a);
        assert_eq!(
            reg.resolve(&b, "bob", 3).expect("b").limits.max_files,
            Some(3)
        );
        assert!(reg.has_live_handle("tok", 3));
        assert_eq!(reg.revoke(&db, "tok").expect("revoke"), 2);
        assert!(!reg.has_live_handle("tok", 3));
        assert!(reg.resolve(&a, "alice", 4).is_none());
    }
}
