//! The handle registry (SPEC §4): opaque handles bound to one client and one upstream session,
//! sliding expiry, kept in memory for the request path and in the state database for restarts.
//!
//! The request path only resolves, so the registry is laid out for that. A handle is 128 random
//! bits and the number of its slot, masked: `b64url(r)` (22 characters) then `slot ⊕ SipHash_k(…)`
//! of those characters in six base64url digits, 28 characters. A resolve reads the six digits,
//! unmasks the slot and reads that one slot ([`slots`]): the handle's first 22 characters, the
//! client key, the expiry, the limits' number and the token (up to 63 bytes) all sit in its 128
//! bytes, read without a lock. The 22 characters are compared as they are, not decoded: a text
//! upgate did not issue matches no slot. Nothing else is read from memory, where a hash table would
//! read its index, then the entry, then the token. The mask keeps the slot's number from the client
//! (it would tell how many handles are live); its key is derived from one kept in the state
//! database, so a handle finds its slot again after a restart.
//!
//! A resolve is kept to about 300 instructions: at that size a thread's consecutive resolves
//! overlap their loads from memory, which a resolve of 540 (decoding the handle, AES for the mask)
//! did not, and a resolve among a million handles takes half the time.
//!
//! Writers (register, revoke, prune) take one lock: they find a token's slots by the token's hash,
//! keep the free slots, and intern the limits. Handles of the earlier forms still resolve: 27
//! characters (`b64url(r ‖ slot ⊕ AES_k(r))`, decoded) and 22 (the 128 bits alone, found through a
//! map of their slots).

mod slots;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::quic::{AES_128, HeaderProtectionKey};
use ring::rand::{SecureRandom, SystemRandom};
use smallvec::SmallVec;

use crate::db::{Db, DbError, HandleRecord, Limits, SessionRecord};
use slots::{Fill, INLINE, LONG, Seen, Slots, TokenBytes};

/// What a valid handle resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub token: Arc<str>,
    /// Shared by every session registered with the same limits.
    pub limits: Arc<Limits>,
}

/// A session token as [`Registry::resolve_token`] returns it: copied out of its slot when it fits
/// there, so a resolve allocates nothing.
pub struct Token(Held);

enum Held {
    Inline(TokenBytes),
    Long(Arc<str>),
}

impl Token {
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Held::Inline(b) => inline(b).unwrap_or_default(),
            Held::Long(s) => s,
        }
    }
}

/// The token a slot holds inline; `None` for the mark of a long one.
fn inline(b: &TokenBytes) -> Option<&str> {
    let len = usize::from(b.len);
    if len > INLINE {
        return None;
    }
    std::str::from_utf8(&b.bytes[..len]).ok()
}

/// A handle's 128 random bits.
type Key = [u8; 16];

/// The key and masked slot of a handle of an earlier form (27 or 22 characters); `None` for
/// anything upgate cannot have issued (the decoder refuses non-canonical text, so one handle has
/// exactly one spelling).
fn parse(handle: &str) -> Option<(Key, Option<u32>)> {
    let mut out = [0u8; 21];
    let text = handle.as_bytes();
    let (decoded, masked) = match text.len() {
        MASKED => (decode::<MASKED>(text.try_into().ok()?, &mut out), true),
        BARE => (decode::<BARE>(text.try_into().ok()?, &mut out), false),
        _ => return None,
    };
    if !decoded {
        return None;
    }
    let mut key = [0u8; 16];
    key.copy_from_slice(&out[..16]);
    if key == [0; 16] {
        return None;
    }
    let masked = masked.then(|| u32::from_le_bytes([out[16], out[17], out[18], out[19]]));
    Some((key, masked))
}

/// The base64url digits.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The value of each base64url character; `0xFF` for every other byte.
const B64URL: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// The lengths of the handle forms: the one issued now, and the two of earlier versions.
const TEXT: usize = 28;
const MASKED: usize = 27;
const BARE: usize = 22;

/// Whether upgate could have issued `handle`: for one of now, whether its first 22 characters are
/// 128 bits, not all zero, spelt canonically (a resolve needs no such check: it compares them with
/// those upgate issued; a record read from the database does).
fn issuable(handle: &str) -> bool {
    match handle.as_bytes().first_chunk::<BARE>() {
        Some(prefix) if handle.len() == TEXT => {
            let mut out = [0u8; 21];
            decode::<BARE>(prefix, &mut out) && out[..16] != [0; 16]
        }
        _ => true,
    }
}

/// A handle as its slot holds it: its first 22 characters (all of its random bits), its length,
/// which tells its form, and a zero byte.
type Id = [u64; 3];

fn id_of(prefix: &[u8; BARE], form: usize) -> Id {
    let mut b = [0u8; 24];
    b[..BARE].copy_from_slice(prefix);
    b[BARE] = form as u8;
    let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    [word(0), word(8), word(16)]
}

fn id_bytes(id: &Id) -> [u8; 24] {
    let mut b = [0u8; 24];
    for (c, w) in b.chunks_exact_mut(8).zip(id) {
        c.copy_from_slice(&w.to_le_bytes());
    }
    b
}

/// A masked slot number as six base64url digits (36 bits, the top four zero).
fn slot_digits(masked: u32) -> [u8; 6] {
    std::array::from_fn(|i| ALPHABET[(u64::from(masked) >> (30 - 6 * i)) as usize & 63])
}

/// The masked slot number of six digits; `None` unless they are base64url with the top four bits
/// zero, so that a slot has one spelling.
#[inline(always)]
fn slot_of_digits(digits: &[u8; 6]) -> Option<u32> {
    let mut bad = 0u8;
    let n = digits.iter().fold(0u64, |n, &c| {
        let v = B64URL[usize::from(c)];
        bad |= v;
        n << 6 | u64::from(v)
    });
    if bad & 0x80 != 0 {
        return None;
    }
    u32::try_from(n).ok()
}

/// SipHash-c-d (Aumasson and Bernstein) of a 16-byte message, given as two little-endian words.
#[inline(always)]
fn siphash<const C: usize, const D: usize>(key: [u64; 2], message: [u64; 2]) -> u64 {
    let mut v = [
        key[0] ^ 0x736f_6d65_7073_6575,
        key[1] ^ 0x646f_7261_6e64_6f6d,
        key[0] ^ 0x6c79_6765_6e65_7261,
        key[1] ^ 0x7465_6462_7974_6573,
    ];
    let round = |v: &mut [u64; 4]| {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    };
    // The two words, then the last block: the length (16) in the top byte.
    for m in [message[0], message[1], 16 << 56] {
        v[3] ^= m;
        for _ in 0..C {
            round(&mut v);
        }
        v[0] ^= m;
    }
    v[2] ^= 0xff;
    for _ in 0..D {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// Decodes the unpadded base64url of a handle (22 or 27 characters, 16 or 20 bytes) into `out`.
/// False for any other character, padding included, and for a last character whose unused bits
/// are not zero, as the `base64` crate decides. Every request with a handle runs this: with the
/// length fixed it unrolls into table lookups and shifts, eight characters to a register, a third
/// of the instructions of that crate's decoder.
#[inline(always)]
fn decode<const N: usize>(text: &[u8; N], out: &mut [u8; 21]) -> bool {
    let mut bad = 0u8;
    let mut bits = |chars: &[u8]| {
        chars.iter().fold(0u64, |n, &c| {
            let v = B64URL[usize::from(c)];
            bad |= v;
            n << 6 | u64::from(v)
        })
    };
    let eights = text.chunks_exact(8);
    let rest = eights.remainder();
    for (chars, bytes) in eights.zip(out.chunks_exact_mut(6)) {
        bytes.copy_from_slice(&bits(chars).to_be_bytes()[2..]);
    }
    // The last characters: whole bytes, then the bits left over, which must be zero.
    let at = N / 8 * 6;
    let whole = rest.len() * 6 / 8;
    let unused = rest.len() * 6 % 8;
    let n = bits(rest);
    out[at..at + whole].copy_from_slice(&(n >> unused).to_be_bytes()[8 - whole..]);
    (n & ((1 << unused) - 1) == 0) & (bad & 0x80 == 0)
}

/// Equality of words that takes the same time wherever they differ: XORed and ORed together,
/// with no early exit.
fn same<const N: usize>(a: [u64; N], b: [u64; N]) -> bool {
    let diff = a.iter().zip(b).fold(0, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
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

    #[inline(always)]
    fn new(client: &str) -> Option<ClientKey> {
        let b = client.as_bytes();
        let mut k = [0u8; 24];
        match <&[u8; 22]>::try_from(b) {
            // The length of every client key upgate makes (SPEC §2), copied without a call.
            Ok(b) => k[..22].copy_from_slice(b),
            Err(_) if b.len() <= Self::MAX => k[..b.len()].copy_from_slice(b),
            Err(_) => return None,
        }
        k[Self::MAX] = b.len() as u8;
        Some(ClientKey(k))
    }

    /// [`ClientKey::words`] of `client`'s key, read straight from its bytes when it has the
    /// length of every key upgate makes, as a resolve needs them.
    #[inline(always)]
    fn words_of(client: &str) -> Option<[u64; 3]> {
        let Some(b) = client
            .as_bytes()
            .first_chunk::<22>()
            .filter(|_| client.len() == 22)
        else {
            return ClientKey::new(client).map(|k| k.words());
        };
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let mut tail = [0u8; 8];
        tail[..6].copy_from_slice(&b[16..]);
        tail[7] = 22;
        Some([word(0), word(8), u64::from_le_bytes(tail)])
    }

    fn from_words(words: [u64; 3]) -> ClientKey {
        let mut k = [0u8; 24];
        for (c, w) in k.chunks_exact_mut(8).zip(words) {
            c.copy_from_slice(&w.to_le_bytes());
        }
        ClientKey(k)
    }

    fn as_str(&self) -> &str {
        let len = usize::from(self.0[Self::MAX]).min(Self::MAX);
        std::str::from_utf8(&self.0[..len]).unwrap_or_default()
    }

    fn words(&self) -> [u64; 3] {
        let mut w = [0u64; 3];
        for (w, c) in w.iter_mut().zip(self.0.chunks_exact(8)) {
            *w = u64::from_le_bytes(c.try_into().unwrap_or_default());
        }
        w
    }

    /// Equality that takes the same time wherever the keys differ.
    fn same(&self, other: &ClientKey) -> bool {
        same(self.words(), other.words())
    }
}

/// A token as a slot keeps it: inline when it fits, else only the [`LONG`] mark.
fn token_bytes(token: &str) -> TokenBytes {
    let mut out = TokenBytes {
        len: LONG,
        bytes: [0; INLINE],
    };
    if token.len() <= INLINE {
        out.len = token.len() as u8;
        out.bytes[..token.len()].copy_from_slice(token.as_bytes());
    }
    out
}

type Hasher = foldhash::fast::RandomState;

/// What only writers touch, under one lock.
#[derive(Default)]
struct Writer {
    /// Slots handed out so far: those below it hold a handle or are in `free`.
    next: u32,
    free: Vec<u32>,
    live: usize,
    /// The slots of each token, by the token's hash (tokens of one hash share a list).
    by_token: HashMap<u64, SmallVec<[u32; 2]>, Hasher>,
    /// Each distinct `Limits` once, with its number and how many slots use it.
    interned: HashMap<Arc<Limits>, u32>,
    uses: Vec<u32>,
    free_limits: Vec<u32>,
}

pub struct Registry {
    slots: Slots,
    writer: Mutex<Writer>,
    /// Interned limits by number; a number is reused only once no slot uses it.
    limits: RwLock<Vec<Option<Arc<Limits>>>>,
    /// Tokens longer than a slot holds, by slot.
    long: RwLock<HashMap<u32, Arc<str>>>,
    /// Handles of the 22-character form: their slot.
    strays: RwLock<HashMap<Id, u32>>,
    /// The mask of the slots of 27-character handles.
    mask: HeaderProtectionKey,
    /// The SipHash key of the mask of the slots of handles issued now.
    sip: [u64; 2],
    hasher: Hasher,
    ttl_secs: AtomicU64,
    rng: SystemRandom,
}

impl Registry {
    /// An empty registry whose handles live `ttl` after their last resolve, with a new mask key.
    pub fn new(ttl: Duration) -> Registry {
        let (mut aes, mut sip) = ([0u8; 16], [0u8; 16]);
        // The masks hide a number, not a secret: a failing generator leaves them merely weaker.
        let _ = SystemRandom::new().fill(&mut aes);
        let _ = SystemRandom::new().fill(&mut sip);
        Registry::with_masks(ttl, &aes, &sip)
    }

    /// `aes` masks the slots of 27-character handles, `sip` those of the handles issued now: two
    /// keys, so that no resolve of a handle a client makes up computes anything of the other.
    fn with_masks(ttl: Duration, aes: &[u8; 16], sip: &[u8; 16]) -> Registry {
        let mask = HeaderProtectionKey::new(&AES_128, aes).expect("a 16-byte AES-128 key");
        let half = |i: usize| u64::from_le_bytes(sip[i..i + 8].try_into().unwrap_or_default());
        let sip = [half(0), half(8)];
        Registry {
            slots: Slots::new(),
            writer: Mutex::default(),
            limits: RwLock::default(),
            long: RwLock::default(),
            strays: RwLock::default(),
            mask,
            sip,
            hasher: Hasher::default(),
            ttl_secs: AtomicU64::new(ttl.as_secs().max(1)),
            rng: SystemRandom::new(),
        }
    }

    /// Loads the live handles of the database, with the mask key kept there.
    pub fn load(db: &Db, ttl: Duration, now: u64) -> Result<Registry, DbError> {
        let rng = SystemRandom::new();
        let make = || {
            let mut key = [0u8; 16];
            rng.fill(&mut key)
                .map_err(|_| DbError::from("no system randomness".to_string()))?;
            Ok(key)
        };
        let aes = db.registry_key("registry_mask_key", make)?;
        let sip = db.registry_key("registry_slot_key", make)?;
        let registry = Registry::with_masks(ttl, &aes, &sip);
        let sessions: HashMap<String, Limits> = db
            .sessions()?
            .into_iter()
            .map(|(token, s)| (token, s.limits))
            .collect();
        let handles = db
            .handles()?
            .into_iter()
            .filter(|(_, r)| r.expires_at > now);
        let ignored = registry.restore(handles.map(|(handle, record)| {
            let limits = sessions.get(&record.token).cloned().unwrap_or_default();
            (handle, record, limits)
        }));
        db.remove_handles(&ignored)?;
        Ok(registry)
    }

    /// Takes in handles as stored, without writing them (what loading does): each goes back to the
    /// slot its text names. Returns the records skipped, for the caller to delete: one upgate
    /// could not have written (a malformed handle or client key, a slot out of range), and of two
    /// that name one slot (which upgate does not write either), the one that expires first.
    pub fn restore(
        &self,
        handles: impl IntoIterator<Item = (String, HandleRecord, Limits)>,
    ) -> Vec<String> {
        let mut w = self.write();
        let (mut strays, mut ignored) = (Vec::new(), Vec::new());
        for (handle, record, limits) in handles {
            let (Some((id, slot)), Some(client)) = (
                self.place(&handle).filter(|_| issuable(&handle)),
                ClientKey::new(&record.client),
            ) else {
                tracing::warn!("a malformed handle record in the state database is removed");
                ignored.push(handle);
                continue;
            };
            let Some(slot) = slot else {
                strays.push((id, handle, record, client, limits));
                continue;
            };
            if slot >= slots::MAX {
                tracing::warn!("a handle record whose slot is out of range is removed");
                ignored.push(handle);
                continue;
            }
            if let Some(held) = self.slots.read(slot).filter(|s| s.used()) {
                tracing::warn!(
                    "two handle records name one slot: the one that expires first is removed"
                );
                if held.expires_at >= secs(record.expires_at) {
                    ignored.push(handle);
                    continue;
                }
                let token = self.token_of(slot, &held).unwrap_or_default();
                ignored.push(self.free(&mut w, slot, &held, &token));
            }
            w.next = w.next.max(slot + 1);
            self.put_stored(&mut w, slot, id, &record, client, limits);
        }
        w.free = (0..w.next)
            .rev()
            .filter(|&n| !self.slots.read(n).is_some_and(|s| s.used()))
            .collect();
        for (id, handle, record, client, limits) in strays {
            let Some(slot) = self.take_slot(&mut w) else {
                ignored.push(handle);
                continue;
            };
            self.put_stored(&mut w, slot, id, &record, client, limits);
            self.strays
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, slot);
        }
        ignored
    }

    fn write(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The mask of a key's slot number: the first bytes of AES-128 of the key.
    fn mask_of(&self, key: &Key) -> u32 {
        self.mask
            .new_mask(key)
            .map_or(0, |m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]))
    }

    /// The mask of the slot of a handle issued now: SipHash-1-3 of its first 16 characters.
    #[inline(always)]
    fn text_mask(&self, text: &[u8; 16]) -> u32 {
        let word = |i: usize| u64::from_le_bytes(text[i..i + 8].try_into().unwrap_or_default());
        siphash::<1, 3>(self.sip, [word(0), word(8)]) as u32
    }

    /// The text of the handle `id` in slot `n`.
    fn text(&self, id: &Id, n: u32) -> String {
        let bytes = id_bytes(id);
        let mut prefix = [0u8; BARE];
        prefix.copy_from_slice(&bytes[..BARE]);
        let text = match usize::from(bytes[BARE]) {
            TEXT => {
                let first = prefix.first_chunk::<16>().unwrap_or(&[0; 16]);
                let digits = slot_digits(n ^ self.text_mask(first));
                [&prefix[..], &digits[..]].concat()
            }
            MASKED => {
                // The 22nd character holds the bits' last two and the masked slot's first four,
                // which the 16 bytes decoded leave out (so the verdict on them is not wanted).
                let mut bytes = [0u8; 21];
                let _ = decode::<BARE>(&prefix, &mut bytes);
                let key = *bytes.first_chunk::<16>().unwrap_or(&[0; 16]);
                bytes[16..20].copy_from_slice(&(n ^ self.mask_of(&key)).to_le_bytes());
                return URL_SAFE_NO_PAD.encode(&bytes[..20]);
            }
            _ => prefix.to_vec(),
        };
        String::from_utf8(text).unwrap_or_default()
    }

    /// What a handle's text names: its identity and its slot (`None` for a 22-character handle,
    /// whose slot is in `strays`); `None` for anything upgate cannot have issued. A handle of now
    /// is not decoded: its first 22 characters are compared whole with its slot's, and only its
    /// six digits are read.
    #[inline(always)]
    fn place(&self, handle: &str) -> Option<(Id, Option<u32>)> {
        let text = handle.as_bytes();
        if let Ok(t) = <&[u8; TEXT]>::try_from(text) {
            let (prefix, digits) = t.split_first_chunk::<BARE>()?;
            let masked = slot_of_digits(digits.try_into().ok()?)?;
            let first = prefix.first_chunk::<16>()?;
            return Some((id_of(prefix, TEXT), Some(masked ^ self.text_mask(first))));
        }
        let (key, masked) = parse(handle)?;
        let id = id_of(text.first_chunk::<BARE>()?, text.len());
        Some((id, masked.map(|m| m ^ self.mask_of(&key))))
    }

    fn take_slot(&self, w: &mut Writer) -> Option<u32> {
        if let Some(n) = w.free.pop() {
            return Some(n);
        }
        if w.next >= slots::MAX {
            return None;
        }
        w.next += 1;
        Some(w.next - 1)
    }

    /// The number of `limits`, interned, counted as used once more.
    fn intern(&self, w: &mut Writer, limits: Limits) -> u32 {
        if let Some(&id) = w.interned.get(&limits) {
            w.uses[id as usize] += 1;
            return id;
        }
        let shared = Arc::new(limits);
        let mut table = self.limits.write().unwrap_or_else(PoisonError::into_inner);
        let id = match w.free_limits.pop() {
            Some(id) => {
                table[id as usize] = Some(shared.clone());
                w.uses[id as usize] = 1;
                id
            }
            None => {
                table.push(Some(shared.clone()));
                w.uses.push(1);
                (table.len() - 1) as u32
            }
        };
        w.interned.insert(shared, id);
        id
    }

    /// One use fewer of limits number `id`; the number is freed with its last use.
    fn release(&self, w: &mut Writer, id: u32) {
        let Some(uses) = w.uses.get_mut(id as usize) else {
            return;
        };
        *uses = uses.saturating_sub(1);
        if *uses > 0 {
            return;
        }
        let mut table = self.limits.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(shared) = table.get_mut(id as usize).and_then(Option::take) {
            w.interned.remove(&shared);
            w.free_limits.push(id);
        }
    }

    /// Fills slot `n` with a handle.
    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        w: &mut Writer,
        n: u32,
        id: Id,
        token: &str,
        client: ClientKey,
        expires_at: u32,
        limits: Limits,
    ) {
        let limits = self.intern(w, limits);
        if token.len() > INLINE {
            self.long
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(n, token.into());
        }
        self.slots.fill(
            n,
            &Fill {
                key: id,
                client: client.words(),
                expires_at,
                limits,
                token: token_bytes(token),
            },
        );
        w.by_token
            .entry(self.hasher.hash_one(token))
            .or_default()
            .push(n);
        w.live += 1;
    }

    /// Fills slot `n` with a handle as the database holds it.
    fn put_stored(
        &self,
        w: &mut Writer,
        n: u32,
        id: Id,
        record: &HandleRecord,
        client: ClientKey,
        limits: Limits,
    ) {
        let expires_at = secs(record.expires_at);
        self.put(w, n, id, &record.token, client, expires_at, limits);
    }

    /// Empties slot `n` (seen as `seen`), returning its handle's text. The slot goes back to the
    /// free list through [`Registry::reuse`].
    fn free(&self, w: &mut Writer, n: u32, seen: &Seen, token: &str) -> String {
        let text = self.text(&seen.key(), n);
        self.slots.clear(n);
        self.release(w, seen.limits);
        if token.len() > INLINE {
            self.long
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&n);
        }
        self.strays
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&seen.key());
        let hash = self.hasher.hash_one(token);
        if let Some(list) = w.by_token.get_mut(&hash) {
            list.retain(|s| *s != n);
            if list.is_empty() {
                w.by_token.remove(&hash);
            }
        }
        w.live -= 1;
        text
    }

    /// Returns ended handles' slots to the free list, once their records are gone from the
    /// database: a slot is never given to a new handle while a record still names it.
    fn reuse(&self, ended: Vec<(String, u32)>, db: &Db) -> Result<usize, DbError> {
        let texts: Vec<String> = ended.iter().map(|(t, _)| t.clone()).collect();
        db.remove_handles(&texts)?;
        self.write().free.extend(ended.iter().map(|(_, n)| *n));
        Ok(ended.len())
    }

    /// The token of slot `n` as seen; a long one from beside the slots (a reader checks the slot
    /// is unchanged after).
    fn token_of(&self, n: u32, seen: &Seen) -> Option<Arc<str>> {
        match inline(&seen.token()) {
            Some(t) => Some(t.into()),
            None => self
                .long
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&n)
                .cloned(),
        }
    }

    /// The used slots of `token`, with what they hold. Under the writer lock.
    fn slots_of(&self, w: &Writer, token: &str) -> SmallVec<[(u32, Seen); 2]> {
        let Some(list) = w.by_token.get(&self.hasher.hash_one(token)) else {
            return SmallVec::new();
        };
        list.iter()
            .filter_map(|&n| Some((n, self.slots.read(n)?)))
            .filter(|(n, seen)| {
                seen.used() && self.token_of(*n, seen).is_some_and(|t| &*t == token)
            })
            .collect()
    }

    /// A new `handle_ttl` (config reload); it applies from each handle's next refresh.
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_secs.store(ttl.as_secs().max(1), Ordering::Relaxed);
    }

    fn ttl(&self) -> u64 {
        self.ttl_secs.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.write().live
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers `token` for `client` (or refreshes its live handle) and sets the session's limits
    /// on every handle of it. Returns the handle and its expiry (unix seconds). Durable before it
    /// returns.
    pub fn register(
        &self,
        db: &Db,
        token: &str,
        client: &str,
        limits: Limits,
        now: u64,
    ) -> Result<(String, u64), DbError> {
        self.register_with(Some(db), token, client, limits, now, &mut || ())
    }

    /// [`Registry::register`] with nothing written to the database, for benchmarks: such a
    /// handle does not survive a restart.
    #[doc(hidden)]
    pub fn register_in_memory(
        &self,
        token: &str,
        client: &str,
        limits: Limits,
        now: u64,
    ) -> Result<(String, u64), DbError> {
        self.register_with(None, token, client, limits, now, &mut || ())
    }

    /// Registers, the record durable (when there is a database) before the handle is in memory.
    ///
    /// A handle's slot is taken from the free list only once the database no longer has a record
    /// of the handle that held it (see [`Registry::revoke`]), so two records never name one slot.
    /// A live handle registered again is renewed only if its record is still there, and only if
    /// its slot still holds it afterwards; when a revoke or a prune ends it in between, the
    /// registration starts over and issues a new handle, as if it came after.
    /// (`meanwhile` runs between the two phases: where tests put a racing revoke.)
    fn register_with(
        &self,
        db: Option<&Db>,
        token: &str,
        client: &str,
        limits: Limits,
        now: u64,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<(String, u64), DbError> {
        let ck = ClientKey::new(client)
            .ok_or_else(|| DbError::from("not a client key: too long".to_string()))?;
        let expires_at = now + self.ttl();
        let record = HandleRecord {
            token: token.into(),
            client: client.into(),
            expires_at,
        };
        let session = SessionRecord {
            limits: limits.clone(),
            alive_until: expires_at,
        };
        for _ in 0..3 {
            let key = self.new_id()?;
            let (n, existing) = {
                let mut w = self.write();
                let live = self.slots_of(&w, token).into_iter().find(|(_, s)| {
                    ClientKey::from_words(s.client).same(&ck) && s.expires_at > secs(now)
                });
                match live {
                    Some((n, seen)) => (n, Some(seen.key())),
                    None => (
                        self.take_slot(&mut w).ok_or_else(|| {
                            DbError::from("the handle registry is full".to_string())
                        })?,
                        None,
                    ),
                }
            };
            meanwhile();
            if let Some(key) = existing {
                let handle = self.text(&key, n);
                let renewed = match db {
                    Some(db) => db.renew_handle(&handle, &record, &session)?,
                    None => true,
                };
                let mut w = self.write();
                let held = self
                    .slots
                    .read(n)
                    .is_some_and(|s| s.used() && same(s.key(), key));
                if renewed && held {
                    self.slots.renew(n, secs(expires_at));
                    self.set_limits(&mut w, token, limits);
                    return Ok((handle, expires_at));
                }
                // Ended meanwhile; its record goes (or went) with it.
                continue;
            }
            let handle = self.text(&key, n);
            if let Some(db) = db {
                if let Err(e) = db.put_handle(&handle, &record, &session) {
                    self.write().free.push(n);
                    return Err(e);
                }
            }
            let mut w = self.write();
            self.put(&mut w, n, key, token, ck, secs(expires_at), limits.clone());
            self.set_limits(&mut w, token, limits);
            return Ok((handle, expires_at));
        }
        Err(DbError::from(
            "the handle was ended each time it was registered again".to_string(),
        ))
    }

    /// Sets the limits of every handle of `token`.
    fn set_limits(&self, w: &mut Writer, token: &str, limits: Limits) {
        for (n, seen) in self.slots_of(w, token) {
            let id = self.intern(w, limits.clone());
            self.slots.set_limits(n, id);
            self.release(w, seen.limits);
        }
    }

    /// The identity of a new handle: 128 random bits, never all zero.
    fn new_id(&self) -> Result<Id, DbError> {
        let mut key = [0u8; 16];
        while key == [0; 16] {
            self.rng
                .fill(&mut key)
                .map_err(|_| DbError::from("no system randomness".to_string()))?;
        }
        let mut prefix = [0u8; BARE];
        URL_SAFE_NO_PAD
            .encode_slice(key, &mut prefix)
            .map_err(|_| DbError::from("a handle of 22 characters".to_string()))?;
        Ok(id_of(&prefix, TEXT))
    }

    /// The slot and a copy of it for a handle presented by `client`, refreshing its expiry; `None`
    /// for an unknown, expired or other client's handle alike. Inlined, with what it calls, into
    /// each resolve: the slot's copy then stays in registers instead of being moved through the
    /// stack twice: a seventh fewer instructions a resolve.
    #[inline(always)]
    fn find(&self, handle: &str, client: &str, now: u64) -> Option<(u32, Seen)> {
        let (id, slot) = self.place(handle)?;
        let client = ClientKey::words_of(client)?;
        let n = match slot {
            Some(n) => n,
            None => *self
                .strays
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&id)?,
        };
        let seen = self.slots.read(n)?;
        let ok = same(seen.key(), id) & same(seen.client, client) & (seen.expires_at > secs(now));
        if !ok {
            return None;
        }
        let expires_at = secs(now + self.ttl());
        if seen.expires_at != expires_at {
            self.slots.refresh(n, expires_at);
        }
        Some((n, seen))
    }

    /// The session token of a handle presented by `client`, refreshing its expiry: what the proxy
    /// needs for `X-Upload-Session`. `None` for an unknown, expired or other client's handle alike.
    pub fn resolve_token(&self, handle: &str, client: &str, now: u64) -> Option<Token> {
        loop {
            let (n, seen) = self.find(handle, client, now)?;
            let token = seen.token();
            if token.len != LONG {
                return Some(Token(Held::Inline(token)));
            }
            let long = self.token_of(n, &seen);
            if self.slots.unchanged(n, &seen) {
                return long.map(|t| Token(Held::Long(t)));
            }
        }
    }

    /// The session (token and limits) of a handle presented by `client`, refreshing its expiry.
    pub fn resolve(&self, handle: &str, client: &str, now: u64) -> Option<Session> {
        loop {
            let (n, seen) = self.find(handle, client, now)?;
            let limits = self
                .limits
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(seen.limits as usize)
                .cloned()
                .flatten();
            let token = self.token_of(n, &seen);
            if self.slots.unchanged(n, &seen) {
                return Some(Session {
                    token: token?,
                    limits: limits?,
                });
            }
        }
    }

    /// Ends every handle of `token`; returns how many.
    pub fn revoke(&self, db: &Db, token: &str) -> Result<usize, DbError> {
        let ended: Vec<(String, u32)> = {
            let mut w = self.write();
            self.slots_of(&w, token)
                .into_iter()
                .map(|(n, seen)| (self.free(&mut w, n, &seen, token), n))
                .collect()
        };
        self.reuse(ended, db)
    }

    /// The used slots below the high-water mark, with copies of them.
    fn used(&self, next: u32) -> impl Iterator<Item = (u32, Seen)> + '_ {
        (0..next).filter_map(|n| Some((n, self.slots.read(n)?)).filter(|(_, s)| s.used()))
    }

    /// Writes refreshed expiries older in the database than `step` seconds; called in the background.
    pub fn flush(&self, db: &Db, step: u64) -> Result<usize, DbError> {
        let next = self.write().next;
        let mut refreshed = Vec::new();
        let mut at = Vec::new();
        for (n, seen) in self.used(next) {
            let persisted = self.slots.persisted(n);
            if u64::from(seen.expires_at) < u64::from(persisted) + step {
                continue;
            }
            let Some(token) = self.token_of(n, &seen) else {
                continue;
            };
            if !self.slots.unchanged(n, &seen) {
                continue;
            }
            let record = HandleRecord {
                token: token.to_string(),
                client: ClientKey::from_words(seen.client).as_str().to_string(),
                expires_at: u64::from(seen.expires_at),
            };
            refreshed.push((self.text(&seen.key(), n), record));
            at.push((n, seen));
        }
        if refreshed.is_empty() {
            return Ok(0);
        }
        db.refresh_handles(&refreshed)?;
        // Under the writer lock, so that no slot is refilled between the check and the mark.
        let _w = self.write();
        for (n, seen) in &at {
            if self.slots.unchanged(*n, seen) {
                self.slots.set_persisted(*n, seen.expires_at);
            }
        }
        Ok(refreshed.len())
    }

    /// Removes expired handles from memory and the database; returns how many.
    pub fn prune(&self, db: &Db, now: u64) -> Result<usize, DbError> {
        let ended: Vec<(String, u32)> = {
            let mut w = self.write();
            let expired: Vec<(u32, Seen)> = self
                .used(w.next)
                .filter(|(_, s)| s.expires_at <= secs(now))
                .collect();
            expired
                .into_iter()
                .filter_map(|(n, seen)| {
                    let token = self.token_of(n, &seen)?;
                    Some((self.free(&mut w, n, &seen, &token), n))
                })
                .collect()
        };
        self.reuse(ended, db)
    }

    /// Whether any live handle stands for `token`.
    pub fn has_live_handle(&self, token: &str, now: u64) -> bool {
        let w = self.write();
        self.slots_of(&w, token)
            .iter()
            .any(|(_, s)| s.expires_at > secs(now))
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

    /// The handle decoder agrees with the `base64` crate's strict decoder on every text it is
    /// given: valid, non-canonical, padded and with foreign characters alike.
    #[test]
    fn the_handle_decoder_is_the_strict_base64url_one() {
        let chars = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/. \0\xff";
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut agreed = [0usize; 2];
        for round in 0..400_000 {
            let len = if round % 2 == 0 { 22 } else { 27 };
            let mut text: Vec<u8> = (0..len).map(|_| chars[next() as usize % 64]).collect();
            // Now and then a foreign byte anywhere, or any character last.
            match next() % 4 {
                0 => text[next() as usize % len] = chars[64 + next() as usize % (chars.len() - 64)],
                1 => text[len - 1] = chars[next() as usize % chars.len()],
                _ => {}
            }
            let mut ours = [0u8; 21];
            let mut theirs = [0u8; 21];
            let ok = if len == 22 {
                decode::<22>(text[..].try_into().expect("22"), &mut ours)
            } else {
                decode::<27>(text[..].try_into().expect("27"), &mut ours)
            };
            let expected = URL_SAFE_NO_PAD.decode_slice(&text, &mut theirs);
            assert_eq!(ok, expected.is_ok(), "{:?}", String::from_utf8_lossy(&text));
            if let Ok(n) = expected {
                assert_eq!(ours[..n], theirs[..n]);
            }
            agreed[usize::from(ok)] += 1;
        }
        assert!(agreed[0] > 10_000 && agreed[1] > 10_000, "{agreed:?}");
    }

    /// The mask's SipHash is SipHash: its 2-4 form agrees with the standard library's (the
    /// reference implementation's), and the 1-3 form the mask uses is the same rounds, fewer.
    #[test]
    #[allow(deprecated)]
    fn siphash_is_the_reference_one() {
        use std::hash::Hasher;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..1000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (key, message) = ([x, x.rotate_left(17)], [x ^ 0x55, x.rotate_left(41)]);
            let mut reference = std::hash::SipHasher::new_with_keys(key[0], key[1]);
            reference.write(&message[0].to_le_bytes());
            reference.write(&message[1].to_le_bytes());
            assert_eq!(siphash::<2, 4>(key, message), reference.finish());
        }
        // The paper's test vector: key 00..0f, message 00..0f.
        let key = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];
        assert_eq!(siphash::<2, 4>(key, key), 0x3f2a_cc7f_57c2_9bdb);
    }

    /// Slot digits read back as written, for every bit of a slot number.
    #[test]
    fn slot_digits_read_back() {
        for masked in (0..32).map(|b| 1u32 << b).chain([0, u32::MAX, 0x1234_5678]) {
            assert_eq!(slot_of_digits(&slot_digits(masked)), Some(masked));
        }
        assert_eq!(slot_of_digits(b"EAAAAA"), None, "36 bits, the top four set");
        assert_eq!(slot_of_digits(b"AAAAA="), None);
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
        for key in [
            "",
            "abc",
            "Zm9vYmFyYmF6cXV4cXV1eA",
            "Zm9vYmFyYmF6cXV4cXV1eAx",
            "€uro",
        ] {
            assert_eq!(ClientKey::words_of(key), Some(k(key).words()), "{key}");
        }
        assert_eq!(ClientKey::words_of(&"x".repeat(24)), None);
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
        assert!(reg.place(&h).is_some());
        assert_eq!(h.len(), 28);
        for bad in [
            "",
            "short",
            &format!("{h}A"),
            &h[..27],
            &h[..22],
            &h.replace(|_: char| true, "*"),
            &"A".repeat(28),
            &"A".repeat(27),
        ] {
            assert!(reg.resolve(bad, "c", 1).is_none(), "{bad:?}");
            assert!(reg.resolve_token(bad, "c", 1).is_none(), "{bad:?}");
        }
        // Another spelling of the 128 bits (the unused low bits of the 22nd character set) is
        // not the handle, nor is a slot number with any of the six digits' top four bits set,
        // nor a digit that is not base64url.
        let at = |i: usize, c: char| format!("{}{c}{}", &h[..i], &h[i + 1..]);
        let value = |c: u8| B64URL[usize::from(c)];
        let twenty_second = ALPHABET[usize::from(value(h.as_bytes()[21]) | 1)] as char;
        assert_ne!(at(21, twenty_second), h);
        let top = ALPHABET[usize::from(value(h.as_bytes()[22]) | 0x10)] as char;
        for alias in [at(21, twenty_second), at(22, top), at(27, '='), at(27, '+')] {
            assert!(reg.resolve(&alias, "c", 1).is_none(), "{alias}");
        }
        assert!(reg.resolve(&h, "c", 1).is_some());
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
    /// The random bits of one handle with the slot of another, and the reverse, are nobody's.
    #[test]
    fn a_handle_is_its_bits_and_its_slot_together() {
        let (_d, db, reg) = setup();
        let (a, _) = reg
            .register(&db, "ta", "c", Limits::default(), 0)
            .expect("a");
        let (b, _) = reg
            .register(&db, "tb", "c", Limits::default(), 0)
            .expect("b");
        let slot = |h: &str| reg.place(h).expect("handle").1.expect("slot");
        assert_ne!(slot(&a), slot(&b), "two slots");
        // Each one's 22 characters with the digits that name the other's slot under its own mask.
        for (bits, other) in [(&a, &b), (&b, &a)] {
            let first: [u8; 16] = bits.as_bytes()[..16].try_into().expect("16");
            let digits = slot_digits(slot(other) ^ reg.text_mask(&first));
            let forged = format!(
                "{}{}",
                &bits[..22],
                std::str::from_utf8(&digits).expect("ascii")
            );
            assert_eq!(slot(&forged), slot(other));
            assert!(reg.resolve(&forged, "c", 1).is_none(), "{forged}");
            assert!(reg.resolve_token(&forged, "c", 1).is_none(), "{forged}");
        }
        assert_eq!(reg.resolve_token(&a, "c", 1).expect("a").as_str(), "ta");
    }

    /// A freed slot goes to the next handle; the ended handle does not come back with it, and
    /// limits no handle uses any more are let go.
    #[test]
    fn slots_and_limits_are_reused_without_leaking() {
        let (_d, db, reg) = setup();
        let five = Limits {
            max_files: Some(5),
            ..Limits::default()
        };
        let (old, _) = reg.register(&db, "old", "c", five, 0).expect("old");
        assert_eq!(reg.revoke(&db, "old").expect("revoke"), 1);
        let (new, _) = reg
            .register(&db, "new", "c", Limits::default(), 1)
            .expect("new");
        let slot = |h: &str| reg.place(h).expect("handle").1.expect("slot");
        assert_eq!(slot(&old), slot(&new), "the freed slot is taken again");
        assert!(reg.resolve(&old, "c", 2).is_none());
        let s = reg.resolve(&new, "c", 2).expect("new");
        assert_eq!((&*s.token, s.limits.max_files), ("new", None));
        let w = reg.write();
        assert_eq!(
            w.interned.len(),
            1,
            "the limits of the ended handle are let go"
        );
        assert_eq!(w.live, 1);
    }

    /// Tokens longer than a slot holds are kept beside it, and resolve the same.
    #[test]
    fn long_tokens_resolve_and_end() {
        let (_d, db, reg) = setup();
        let long = "t".repeat(256);
        let (h, _) = reg
            .register(&db, &long, "c", Limits::default(), 0)
            .expect("register");
        let (fits, _) = reg
            .register(&db, &"u".repeat(INLINE), "c", Limits::default(), 0)
            .expect("register");
        assert_eq!(reg.resolve_token(&h, "c", 1).expect("long").as_str(), long);
        assert_eq!(&*reg.resolve(&h, "c", 1).expect("long").token, long);
        assert_eq!(
            reg.resolve_token(&fits, "c", 1).expect("fits").as_str(),
            "u".repeat(INLINE)
        );
        assert_eq!(INLINE, 64, "a hex SHA-256 fits in the slot");
        assert_eq!(
            reg.long.read().expect("long").len(),
            1,
            "only the token longer than a slot holds is kept beside it"
        );
        let (again, _) = reg
            .register(&db, &long, "c", Limits::default(), 2)
            .expect("again");
        assert_eq!(again, h);
        assert!(reg.has_live_handle(&long, 3));
        assert_eq!(reg.revoke(&db, &long).expect("revoke"), 1);
        assert!(reg.resolve_token(&h, "c", 4).is_none());
        assert!(reg.long.read().expect("long").is_empty());
    }

    /// Stores a handle of the earlier 22-character form for token "tok" and client "c", as upgate
    /// wrote them before, expiring at 100.
    fn put_earlier(db: &Db, handle: &str, limits: Limits) {
        let record = HandleRecord {
            token: "tok".into(),
            client: "c".into(),
            expires_at: 100,
        };
        let session = SessionRecord {
            limits,
            alive_until: 100,
        };
        db.put_handle(handle, &record, &session).expect("put");
    }

    /// Handles of the earlier forms (22 and 27 characters), read from the database, resolve and
    /// are written back under their own text.
    #[test]
    fn handles_of_the_earlier_forms_still_resolve() {
        for form in [BARE, MASKED] {
            earlier_form_resolves(form);
        }
    }

    fn earlier_form_resolves(form: usize) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.redb");
        let old = match form {
            BARE => URL_SAFE_NO_PAD.encode([7u8; 16]),
            _ => {
                // As an earlier upgate wrote it for slot 3, with the mask key of this database.
                let loaded =
                    Registry::load(&Db::open(&path).expect("db"), Duration::from_secs(9), 0)
                        .expect("load");
                let mut bytes = [7u8; 20];
                bytes[16..].copy_from_slice(&(3 ^ loaded.mask_of(&[7u8; 16])).to_le_bytes());
                URL_SAFE_NO_PAD.encode(bytes)
            }
        };
        assert_eq!(old.len(), form);
        {
            let two = Limits {
                max_files: Some(2),
                ..Limits::default()
            };
            put_earlier(&Db::open(&path).expect("db"), &old, two);
        }
        let db = Db::open(&path).expect("db");
        let reg = Registry::load(&db, Duration::from_secs(100), 10).expect("load");
        let s = reg.resolve(&old, "c", 20).expect("the old handle");
        assert_eq!((&*s.token, s.limits.max_files), ("tok", Some(2)));
        if form == MASKED {
            assert_eq!(
                reg.place(&old).expect("placed").1,
                Some(3),
                "back in its slot"
            );
        }
        // A handle of now beside it.
        let (new, _) = reg
            .register(&db, "other", "c", Limits::default(), 20)
            .expect("new");
        assert_eq!(new.len(), TEXT);
        assert_eq!(
            reg.resolve_token(&new, "c", 20).expect("new").as_str(),
            "other"
        );
        assert_eq!(reg.revoke(&db, "other").expect("revoke"), 1);
        assert!(
            reg.resolve(&old, "d", 20).is_none(),
            "still bound to its client"
        );
        let (again, _) = reg
            .register(&db, "tok", "c", Limits::default(), 30)
            .expect("again");
        assert_eq!(again, old, "re-registering keeps the handle");
        assert_eq!(
            reg.flush(&db, 1).expect("flush"),
            0,
            "written by the registration"
        );
        assert!(reg.resolve(&old, "c", 120).is_some());
        assert_eq!(reg.flush(&db, 1).expect("flush"), 1);
        let stored: Vec<String> = db
            .handles()
            .expect("handles")
            .into_iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(stored, vec![old.clone()]);
        assert_eq!(reg.prune(&db, 1000).expect("prune"), 1);
        assert!(db.handles().expect("handles").is_empty());
        assert!(reg.strays.read().expect("strays").is_empty());
    }

    /// Records of 28 characters that upgate could not have issued (not base64url, all-zero bits,
    /// a non-canonical 22nd character) are removed at load, and a valid one beside them is kept.
    #[test]
    fn records_upgate_could_not_have_issued_are_removed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.redb");
        let valid = {
            let db = Db::open(&path).expect("db");
            let reg = Registry::load(&db, Duration::from_secs(100), 0).expect("load");
            reg.register(&db, "tok", "c", Limits::default(), 0)
                .expect("register")
                .0
        };
        let digits = &valid[BARE..];
        let non_canonical = {
            let last = B64URL[usize::from(valid.as_bytes()[BARE - 1])];
            let c = ALPHABET[usize::from(last | 1)] as char;
            format!("{}{c}{digits}", &valid[..BARE - 1])
        };
        let forged = [
            format!("{}{digits}", "*".repeat(BARE)),
            format!("{}{digits}", "A".repeat(BARE)),
            non_canonical,
        ];
        {
            let db = Db::open(&path).expect("db");
            for text in &forged {
                put_earlier(&db, text, Limits::default());
            }
        }
        let db = Db::open(&path).expect("db");
        let reg = Registry::load(&db, Duration::from_secs(100), 10).expect("load");
        let stored: Vec<String> = db.handles().expect("h").into_iter().map(|h| h.0).collect();
        assert_eq!(stored, vec![valid.clone()]);
        assert!(reg.resolve(&valid, "c", 20).is_some());
        for text in &forged {
            assert!(reg.resolve(text, "c", 20).is_none(), "{text}");
        }
    }

    /// Resolves racing a writer that ends a handle and gives its slot to another session never
    /// answer with the other session's token.
    #[test]
    fn a_racing_resolve_never_sees_another_sessions_token() {
        let (_d, db, reg) = setup();
        let (h, _) = reg
            .register(&db, "mine", "c", Limits::default(), 0)
            .expect("h");
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..300 {
                    reg.revoke(&db, "mine").expect("revoke");
                    reg.register(&db, &format!("theirs-{i}"), "c", Limits::default(), 0)
                        .expect("theirs");
                    reg.revoke(&db, &format!("theirs-{i}")).expect("revoke");
                }
                stop.store(true, Ordering::Relaxed);
            });
            while !stop.load(Ordering::Relaxed) {
                if let Some(t) = reg.resolve_token(&h, "c", 1) {
                    assert_eq!(t.as_str(), "mine");
                }
                if let Some(s) = reg.resolve(&h, "c", 1) {
                    assert_eq!(&*s.token, "mine");
                }
            }
        });
        assert!(reg.resolve(&h, "c", 1).is_none());
    }

    fn slot_of(reg: &Registry, h: &str) -> Option<u32> {
        let (k, m) = parse(h)?;
        m.map(|m| m ^ reg.mask_of(&k))
    }

    /// A handle registered again while a revoke ends it and another registration takes its slot:
    /// the registration issues a new handle, and the database keeps one record per slot, so both
    /// live handles (and not the ended one) come back after a restart.
    #[test]
    fn registering_again_across_a_revoke_issues_a_new_handle() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.redb");
        let (ended, theirs, mine);
        {
            let db = Db::open(&path).expect("db");
            let reg = Registry::load(&db, Duration::from_secs(100), 0).expect("load");
            ended = reg
                .register(&db, "tok", "c", Limits::default(), 0)
                .expect("a")
                .0;
            let mut other = None;
            let mut race = || {
                if other.is_none() {
                    reg.revoke(&db, "tok").expect("revoke");
                    let h = reg.register(&db, "other", "d", Limits::default(), 1);
                    other = Some(h.expect("other").0);
                }
            };
            mine = reg
                .register_with(Some(&db), "tok", "c", Limits::default(), 1, &mut race)
                .expect("registered afresh")
                .0;
            theirs = other.expect("other");
            assert_eq!(
                slot_of(&reg, &ended),
                slot_of(&reg, &theirs),
                "the slot is reused"
            );
            assert_ne!(mine, ended);
            assert!(reg.resolve(&mine, "c", 2).is_some());
            assert!(reg.resolve(&ended, "c", 2).is_none());
            let mut stored: Vec<String> =
                db.handles().expect("h").into_iter().map(|h| h.0).collect();
            stored.sort();
            let mut expected = vec![mine.clone(), theirs.clone()];
            expected.sort();
            assert_eq!(stored, expected, "one record per live handle");
        }
        let db = Db::open(&path).expect("db");
        let reg = Registry::load(&db, Duration::from_secs(100), 2).expect("reload");
        assert!(reg.resolve(&mine, "c", 3).is_some());
        assert!(reg.resolve(&theirs, "d", 3).is_some());
        assert!(reg.resolve(&ended, "c", 3).is_none());
    }

    /// A handle of the earlier form registered again across a revoke: a new handle that resolves.
    #[test]
    fn an_earlier_handle_registered_across_a_revoke_is_replaced() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.redb");
        let old = URL_SAFE_NO_PAD.encode([7u8; 16]);
        {
            put_earlier(&Db::open(&path).expect("db"), &old, Limits::default());
        }
        let db = Db::open(&path).expect("db");
        let reg = Registry::load(&db, Duration::from_secs(100), 10).expect("load");
        let mut revoked = false;
        let mut race = || {
            if !revoked {
                reg.revoke(&db, "tok").expect("revoke");
                revoked = true;
            }
        };
        let (h, _) = reg
            .register_with(Some(&db), "tok", "c", Limits::default(), 20, &mut race)
            .expect("registered");
        assert_ne!(h, old);
        assert!(reg.resolve(&h, "c", 21).is_some());
        assert!(reg.resolve(&old, "c", 21).is_none());
        let stored: Vec<String> = db.handles().expect("h").into_iter().map(|h| h.0).collect();
        assert_eq!(stored, vec![h]);
    }

    /// Of two records naming one slot (not written by this version, but maybe in a database), the
    /// one that expires last is kept and the other removed at load, whichever sorts first.
    #[test]
    fn two_records_of_one_slot_keep_the_later() {
        for (first_expires, second_expires) in [(500, 900), (900, 500)] {
            let dir = tempfile::tempdir().expect("dir");
            let path = dir.path().join("s.redb");
            let mask = Registry::load(&Db::open(&path).expect("db"), Duration::from_secs(9), 0)
                .expect("load")
                .mask;
            let db = Db::open(&path).expect("db");
            let slot_text = |fill: u8| {
                let mut bytes = [fill; 20];
                let m = mask.new_mask(&[fill; 16]).expect("mask");
                bytes[16..].copy_from_slice(
                    &(7 ^ u32::from_le_bytes([m[0], m[1], m[2], m[3]])).to_le_bytes(),
                );
                URL_SAFE_NO_PAD.encode(bytes)
            };
            // "AQEB..." sorts before "yMjI...".
            let (first, second) = (slot_text(1), slot_text(200));
            for (text, expires_at) in [(&first, first_expires), (&second, second_expires)] {
                let record = HandleRecord {
                    token: text.clone(),
                    client: "c".into(),
                    expires_at,
                };
                let session = SessionRecord::default();
                db.put_handle(text, &record, &session).expect("put");
            }
            let reg = Registry::load(&db, Duration::from_secs(100), 1).expect("reload");
            let (kept, gone) = if first_expires > second_expires {
                (&first, &second)
            } else {
                (&second, &first)
            };
            assert!(reg.resolve(kept, "c", 2).is_some());
            assert!(reg.resolve(gone, "c", 2).is_none());
            let stored: Vec<String> = db.handles().expect("h").into_iter().map(|h| h.0).collect();
            assert_eq!(stored, vec![kept.clone()]);
        }
    }
}
