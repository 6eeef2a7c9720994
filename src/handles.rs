//! The handle registry (SPEC §4): opaque handles bound to one client and one upstream session,
//! sliding expiry, kept in memory for the request path and in the state database for restarts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use ring::rand::{SecureRandom, SystemRandom};

use crate::db::{Db, DbError, HandleRecord, Limits, SessionRecord};

/// What a valid handle resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub token: Arc<str>,
    pub limits: Limits,
}

struct Entry {
    token: Arc<str>,
    client: Box<str>,
    expires_at: AtomicU64,
    /// The expiry last written to the database; refreshes are flushed in batches.
    persisted: AtomicU64,
}

pub struct Registry {
    live: DashMap<Box<str>, Entry>,
    /// (token, client) -> handle, so that re-registering returns the same handle.
    bindings: DashMap<(Arc<str>, Box<str>), Box<str>>,
    limits: DashMap<Arc<str>, Limits>,
    ttl_secs: AtomicU64,
    rng: SystemRandom,
}

impl Registry {
    /// An empty registry whose handles live `ttl` after their last resolve.
    pub fn new(ttl: Duration) -> Registry {
        Registry {
            live: DashMap::new(),
            bindings: DashMap::new(),
            limits: DashMap::new(),
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
        self.limits.insert(token.into(), limits);
    }

    /// Takes in a handle as stored, without writing it (what loading does).
    pub fn restore_handle(&self, handle: &str, record: &HandleRecord) {
        self.insert(handle.into(), record);
    }

    fn insert(&self, handle: Box<str>, record: &HandleRecord) {
        let token: Arc<str> = self
            .limits
            .get_mut(record.token.as_str())
            .map(|e| e.key().clone())
            .unwrap_or_else(|| record.token.as_str().into());
        self.bindings.insert(
            (token.clone(), record.client.as_str().into()),
            handle.clone(),
        );
        self.live.insert(
            handle,
            Entry {
                token,
                client: record.client.as_str().into(),
                expires_at: AtomicU64::new(record.expires_at),
                persisted: AtomicU64::new(record.expires_at),
            },
        );
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
        self.live.is_empty()
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
        let expires_at = now + self.ttl();
        let key: (Arc<str>, Box<str>) = (token.into(), client.into());
        let existing = self
            .bindings
            .get(&key)
            .map(|h| h.value().clone())
            .filter(|h| {
                self.live
                    .get(h)
                    .is_some_and(|e| e.expires_at.load(Ordering::Acquire) > now)
            });
        let handle = match existing {
            Some(h) => h,
            None => self.new_handle()?.into(),
        };
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
        self.limits.insert(token.into(), limits);
        self.insert(handle.clone(), &record);
        Ok((handle.into(), expires_at))
    }

    fn new_handle(&self) -> Result<String, DbError> {
        let mut bytes = [0u8; 16];
        self.rng
            .fill(&mut bytes)
            .map_err(|_| DbError::from("no system randomness".to_string()))?;
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The session of a handle presented by `client`, refreshing its expiry; `None` for an unknown,
    /// expired or other client's handle alike.
    pub fn resolve(&self, handle: &str, client: &str, now: u64) -> Option<Session> {
        let entry = self.live.get(handle)?;
        let same_client = ring_eq(entry.client.as_bytes(), client.as_bytes());
        if !same_client || entry.expires_at.load(Ordering::Acquire) <= now {
            return None;
        }
        entry.expires_at.store(now + self.ttl(), Ordering::Release);
        let limits = self
            .limits
            .get(&*entry.token)
            .map(|l| l.clone())
            .unwrap_or_default();
        Some(Session {
            token: entry.token.clone(),
            limits,
        })
    }

    /// Ends every handle of `token`; returns how many.
    pub fn revoke(&self, db: &Db, token: &str) -> Result<usize, DbError> {
        let mut ended = Vec::new();
        self.live.retain(|handle, e| {
            let keep = &*e.token != token;
            if !keep {
                ended.push(handle.to_string());
            }
            keep
        });
        self.bindings.retain(|(t, _), _| &**t != token);
        db.remove_handles(&ended)?;
        Ok(ended.len())
    }

    /// Forgets the limits of an ended session (its handles are revoked separately).
    pub fn forget_session(&self, token: &str) {
        self.limits.remove(token);
    }

    /// Writes refreshed expiries older in the database than `step` seconds; called in the background.
    pub fn flush(&self, db: &Db, step: u64) -> Result<usize, DbError> {
        let mut refreshed = Vec::new();
        for e in self.live.iter() {
            let expires = e.expires_at.load(Ordering::Acquire);
            if expires >= e.persisted.load(Ordering::Acquire) + step {
                let record = HandleRecord {
                    token: e.token.to_string(),
                    client: e.client.to_string(),
                    expires_at: expires,
                };
                refreshed.push((e.key().to_string(), record));
            }
        }
        if refreshed.is_empty() {
            return Ok(0);
        }
        db.refresh_handles(&refreshed)?;
        for (handle, record) in &refreshed {
            if let Some(e) = self.live.get(handle.as_str()) {
                e.persisted.fetch_max(record.expires_at, Ordering::AcqRel);
            }
        }
        Ok(refreshed.len())
    }

    /// Removes expired handles from memory and the database; returns how many.
    pub fn prune(&self, db: &Db, now: u64) -> Result<usize, DbError> {
        let mut ended = Vec::new();
        self.live.retain(|handle, e| {
            let live = e.expires_at.load(Ordering::Acquire) > now;
            if !live {
                ended.push(handle.to_string());
            }
            live
        });
        self.bindings.retain(|_, h| self.live.contains_key(h));
        db.remove_handles(&ended)?;
        Ok(ended.len())
    }

    /// Whether any live handle stands for `token`.
    pub fn has_live_handle(&self, token: &str, now: u64) -> bool {
        self.live
            .iter()
            .any(|e| &*e.token == token && e.expires_at.load(Ordering::Acquire) > now)
    }
}

/// Constant-time equality, so that timing tells nothing about a client key.
fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    use ring::hmac;
    // Comparing HMACs under a per-process key is constant-time in the inputs and independent of length.
    static KEY: std::sync::OnceLock<hmac::Key> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        let _ = SystemRandom::new().fill(&mut k);
        hmac::Key::new(hmac::HMAC_SHA256, &k)
    });
    let ta = hmac::sign(key, a);
    hmac::verify(key, b, ta.as_ref()).is_ok()
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
    fn constant_time_eq() {
        assert!(ring_eq(b"abc", b"abc"));
        assert!(!ring_eq(b"abc", b"abd"));
        assert!(!ring_eq(b"abc", b"abcd"));
    }
}
