//! The registry's memory: one 128-byte slot per handle (a pair of cache lines), at the number the
//! handle itself carries, so that a resolve reads one place in memory, with no lock.
//!
//! A slot is read as a sequence lock: its writer (there is one at a time, under the registry's
//! lock) makes its counter odd, writes, and makes it even again; a reader copies the slot between
//! two reads of the counter and keeps the copy only if the counter was even and did not move.
//! Every field is an atomic, so a copy taken while a writer works is merely thrown away, and a
//! read is plain loads: no locked instruction, so the resolves of one thread overlap their waits
//! on memory. Segments are never moved or freed while the registry lives.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// Slots per segment (1 MiB each), allocated when the first of them is used.
const SEGMENT: usize = 8192;
const SEGMENTS: usize = 4096;
/// 32M handles at most (4 GiB of slots).
pub(super) const MAX: u32 = (SEGMENT * SEGMENTS) as u32;

/// The longest token a slot holds (a hex SHA-256, as many applications' session ids are, fits).
pub(super) const INLINE: usize = 64;
/// The length byte of a token longer than [`INLINE`], which is kept beside the slots.
pub(super) const LONG: u8 = 0xFF;

/// A token as a slot holds it: its length (or [`LONG`]) and its bytes, zero-padded.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(super) struct TokenBytes {
    pub bytes: [u8; INLINE],
    pub len: u8,
}

/// The key's 23 bytes of its three words; the last byte is the token's length.
const KEY_BYTES: u64 = 0x00FF_FFFF_FFFF_FFFF;

#[derive(Default)]
#[repr(C, align(128))]
struct Slot {
    seq: AtomicU32,
    /// Unix seconds; refreshed by readers outside the sequence lock (see [`Slots::refresh`]).
    expires_at: AtomicU32,
    /// The expiry last written to the database; refreshes are flushed in batches.
    persisted: AtomicU32,
    limits: AtomicU32,
    /// The handle's first 22 characters (its 128 random bits) and its form, then the token's
    /// length; zero in a free slot (no handle's text is zero bytes).
    key: [AtomicU64; 3],
    client: [AtomicU64; 3],
    token: [AtomicU64; 8],
}

/// A consistent copy of a slot.
#[derive(Clone, Copy)]
pub(super) struct Seen {
    seq: u32,
    key: [u64; 3],
    pub client: [u64; 3],
    pub expires_at: u32,
    pub limits: u32,
    token: [u64; 8],
}

impl Seen {
    pub fn used(&self) -> bool {
        self.key() != [0; 3]
    }

    /// The handle (its 22 characters and its form), less the token's length.
    pub fn key(&self) -> [u64; 3] {
        [self.key[0], self.key[1], self.key[2] & KEY_BYTES]
    }

    pub fn token(&self) -> TokenBytes {
        let mut bytes = [0u8; INLINE];
        for (chunk, w) in bytes.chunks_exact_mut(8).zip(self.token) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        TokenBytes {
            len: (self.key[2] >> 56) as u8,
            bytes,
        }
    }
}

/// What a writer puts in a slot.
pub(super) struct Fill {
    /// The handle, with a last byte of zero.
    pub key: [u64; 3],
    pub client: [u64; 3],
    pub expires_at: u32,
    pub limits: u32,
    pub token: TokenBytes,
}

pub(super) struct Slots {
    segments: Box<[OnceLock<Box<[Slot]>>]>,
}

impl Slots {
    pub fn new() -> Slots {
        Slots {
            segments: (0..SEGMENTS).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The slot, if its segment exists.
    fn slot(&self, n: u32) -> Option<&Slot> {
        let n = n as usize;
        self.segments.get(n / SEGMENT)?.get()?.get(n % SEGMENT)
    }

    /// The slot, its segment made if need be; for writers.
    fn slot_made(&self, n: u32) -> &Slot {
        let n = n as usize;
        let segment = self.segments[n / SEGMENT]
            .get_or_init(|| (0..SEGMENT).map(|_| Slot::default()).collect());
        &segment[n % SEGMENT]
    }

    /// A consistent copy of slot `n`; `None` if its segment was never made.
    #[inline(always)]
    pub fn read(&self, n: u32) -> Option<Seen> {
        match self.slot(n) {
            Some(slot) => Some(Self::copy(slot)),
            None => {
                // Read a slot that exists all the same, so that the time a resolve takes does not
                // tell a client probing other slot numbers which segments exist (how many handles
                // there have been).
                let stand_in = self.segments[0].get().map(|s| &s[n as usize % SEGMENT]);
                std::hint::black_box(stand_in.map(Self::copy));
                None
            }
        }
    }

    #[inline(always)]
    fn copy(slot: &Slot) -> Seen {
        loop {
            let seq = slot.seq.load(Ordering::Acquire);
            let seen = Seen {
                seq,
                key: slot.key.each_ref().map(|w| w.load(Ordering::Relaxed)),
                client: slot.client.each_ref().map(|w| w.load(Ordering::Relaxed)),
                expires_at: slot.expires_at.load(Ordering::Relaxed),
                limits: slot.limits.load(Ordering::Relaxed),
                token: slot.token.each_ref().map(|w| w.load(Ordering::Relaxed)),
            };
            fence(Ordering::Acquire);
            if seq & 1 == 0 && slot.seq.load(Ordering::Relaxed) == seq {
                return seen;
            }
            std::hint::spin_loop();
        }
    }

    /// Whether slot `n` is still as `seen` found it (bar its expiry): for what a reader looks up
    /// elsewhere from a copy (limits, a long token) before it trusts the pair.
    pub fn unchanged(&self, n: u32, seen: &Seen) -> bool {
        fence(Ordering::Acquire);
        self.slot(n)
            .is_some_and(|s| s.seq.load(Ordering::Relaxed) == seen.seq)
    }

    /// Moves a handle's expiry, as a resolve does. Outside the sequence lock: a writer that frees
    /// or refills the slot at the same moment may find its expiry set by this store afterwards.
    /// That is harmless: a free slot's expiry means nothing (its key is zero), and a refilled one
    /// gets "now + ttl", which is what its writer set too.
    pub fn refresh(&self, n: u32, expires_at: u32) {
        if let Some(slot) = self.slot(n) {
            slot.expires_at.store(expires_at, Ordering::Relaxed);
        }
    }

    pub fn persisted(&self, n: u32) -> u32 {
        self.slot(n)
            .map_or(0, |s| s.persisted.load(Ordering::Relaxed))
    }

    pub fn set_persisted(&self, n: u32, at: u32) {
        if let Some(slot) = self.slot(n) {
            slot.persisted.fetch_max(at, Ordering::Relaxed);
        }
    }

    /// Runs `write` on slot `n` inside its sequence lock. Only under the registry's writer lock.
    fn write(&self, n: u32, write: impl FnOnce(&Slot)) {
        let slot = self.slot_made(n);
        let seq = slot.seq.load(Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        write(slot);
        slot.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// Puts a handle in slot `n`. Only under the registry's writer lock.
    pub fn fill(&self, n: u32, fill: &Fill) {
        self.write(n, |s| {
            let len = u64::from(fill.token.len) << 56;
            let key = [fill.key[0], fill.key[1], fill.key[2] & KEY_BYTES | len];
            for (w, v) in s.key.iter().zip(key) {
                w.store(v, Ordering::Relaxed);
            }
            for (w, v) in s.client.iter().zip(fill.client) {
                w.store(v, Ordering::Relaxed);
            }
            for (w, chunk) in s.token.iter().zip(fill.token.bytes.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(chunk);
                w.store(u64::from_le_bytes(b), Ordering::Relaxed);
            }
            s.expires_at.store(fill.expires_at, Ordering::Relaxed);
            s.persisted.store(fill.expires_at, Ordering::Relaxed);
            s.limits.store(fill.limits, Ordering::Relaxed);
        });
    }

    /// Empties slot `n`. Only under the registry's writer lock.
    pub fn clear(&self, n: u32) {
        self.write(n, |s| {
            s.key.iter().chain(&s.client).chain(&s.token).for_each(|w| {
                w.store(0, Ordering::Relaxed);
            });
            s.expires_at.store(0, Ordering::Relaxed);
            s.persisted.store(0, Ordering::Relaxed);
            s.limits.store(0, Ordering::Relaxed);
        });
    }

    /// Moves the expiry of a handle registered again, as just written to the database. Only
    /// under the registry's writer lock.
    pub fn renew(&self, n: u32, expires_at: u32) {
        self.write(n, |s| {
            s.expires_at.store(expires_at, Ordering::Relaxed);
            s.persisted.store(expires_at, Ordering::Relaxed);
        });
    }

    /// Changes the limits of slot `n`. Only under the registry's writer lock.
    pub fn set_limits(&self, n: u32, limits: u32) {
        self.write(n, |s| s.limits.store(limits, Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn fill(k: u64) -> Fill {
        let mut bytes = [0u8; INLINE];
        bytes[..8].copy_from_slice(&k.to_le_bytes());
        bytes[INLINE - 1] = k as u8;
        let token = TokenBytes { len: 8, bytes };
        Fill {
            key: [k, !k, k],
            client: [k; 3],
            expires_at: k as u32,
            limits: k as u32,
            token,
        }
    }

    #[test]
    fn a_slot_reads_as_written_and_clears() {
        let slots = Slots::new();
        assert!(slots.read(5).is_none(), "no segment yet");
        slots.fill(5, &fill(9));
        let seen = slots.read(5).expect("made");
        assert!(seen.used());
        assert_eq!(seen.key(), [9, !9, 9]);
        assert_eq!(seen.token().len, 8);
        assert_eq!(seen.token().bytes, fill(9).token.bytes);
        assert!(slots.unchanged(5, &seen));
        slots.refresh(5, 77);
        assert!(slots.unchanged(5, &seen), "a refresh is not a change");
        assert_eq!(slots.read(5).expect("slot").expires_at, 77);
        slots.clear(5);
        assert!(!slots.unchanged(5, &seen));
        assert!(!slots.read(5).expect("slot").used());
        assert!(!slots.read(6).expect("same segment").used());
        assert!(slots.read(MAX).is_none());
    }

    /// A reader racing a writer that keeps rewriting one slot only ever sees whole fills.
    #[test]
    fn readers_never_see_half_a_write() {
        let slots = Slots::new();
        slots.fill(3, &fill(1));
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for k in 1..200_000u64 {
                    slots.fill(3, &fill(k));
                }
                stop.store(true, Ordering::Relaxed);
            });
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) || reads == 0 {
                let seen = slots.read(3).expect("slot");
                let k = seen.key()[0];
                assert_eq!(seen.key(), [k, !k, k]);
                assert_eq!(seen.client, [k; 3]);
                assert_eq!(seen.limits, k as u32);
                assert_eq!(seen.token().len, 8);
                assert_eq!(seen.token().bytes, fill(k).token.bytes);
                reads += 1;
            }
        });
    }
}
