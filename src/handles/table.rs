//! The registry's concurrent map, laid out for memory: each shard keeps its entries densely in one
//! array, and its hash index holds only their positions.
//!
//! A hash table that holds its entries in its buckets pays for every empty bucket at the size of
//! an entry, and just past a doubling half of them are empty (a 72-byte entry then costs 150
//! bytes). Here an empty slot of the index costs 8 bytes, and the array has no holes: a removal
//! moves the last entry into the gap. A lookup reads one line of the index, where a slot holds
//! both the position and half of the hash (no separate control bytes, so no extra miss), then the
//! entry.

use std::hash::{BuildHasher, Hash};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// An entry that holds its own key.
pub(super) trait Keyed {
    type Key: ?Sized + Hash + Eq;
    fn key(&self) -> &Self::Key;
}

type Hasher = foldhash::fast::RandomState;

const LOW: u64 = 0xFFFF_FFFF;

/// Open addressing with linear probing. A slot is the high half of an entry's hash above its
/// position plus one (zero is an empty slot); where an entry's slot goes is given by that high
/// half too, so growing and removing never hash a key again.
#[derive(Default)]
struct Index {
    slots: Vec<u64>,
    len: usize,
}

impl Index {
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    fn home(slot: u64, mask: usize) -> usize {
        (slot >> 32) as usize & mask
    }

    /// The slot of a position for which `is` holds, among those whose hash's high half is `hash`'s.
    fn find(&self, hash: u64, mut is: impl FnMut(usize) -> bool) -> Option<usize> {
        let mask = self.mask();
        let mut i = Self::home(hash, mask);
        loop {
            let slot = *self.slots.get(i)?;
            if slot == 0 {
                return None;
            }
            if slot >> 32 == hash >> 32 && is((slot & LOW) as usize - 1) {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    fn insert(&mut self, hash: u64, at: usize) {
        // At most three quarters full, so that a probe seldom leaves its cache line.
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        // 2^32 entries of a shard would take hundreds of gigabytes.
        let at = u32::try_from(at + 1).expect("a shard holds fewer than 2^32 entries");
        self.place(hash & !LOW | u64::from(at));
        self.len += 1;
    }

    fn place(&mut self, slot: u64) {
        let mask = self.mask();
        let mut i = Self::home(slot, mask);
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = slot;
    }

    fn grow(&mut self) {
        let bigger = vec![0; (self.slots.len() * 2).max(8)];
        for slot in std::mem::replace(&mut self.slots, bigger) {
            if slot != 0 {
                self.place(slot);
            }
        }
    }

    /// Points slot `i` at position `at`.
    fn set(&mut self, i: usize, at: usize) {
        self.slots[i] = self.slots[i] & !LOW | (at as u64 + 1);
    }

    /// Empties slot `i`, moving back the slots after it that belong at or before it, so that no
    /// probe stops short (no tombstones).
    fn remove(&mut self, i: usize) {
        let mask = self.mask();
        let (mut hole, mut j) = (i, i);
        loop {
            j = (j + 1) & mask;
            let slot = self.slots[j];
            if slot == 0 {
                break;
            }
            let home = Self::home(slot, mask);
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole] = slot;
                hole = j;
            }
        }
        self.slots[hole] = 0;
        self.len -= 1;
    }
}

struct Shard<T> {
    index: Index,
    entries: Vec<T>,
}

impl<T> Default for Shard<T> {
    fn default() -> Shard<T> {
        Shard {
            index: Index::default(),
            entries: Vec::new(),
        }
    }
}

impl<T: Keyed> Shard<T> {
    /// The index slot of `key`'s entry and the entry's position.
    fn find(&self, hash: u64, key: &T::Key) -> Option<(usize, usize)> {
        let mut at = 0;
        let slot = self.index.find(hash, |i| {
            at = i;
            self.entries[i].key() == key
        })?;
        Some((slot, at))
    }

    fn position(&self, hash: u64, key: &T::Key) -> Option<usize> {
        self.find(hash, key).map(|(_, at)| at)
    }

    /// Adds an entry whose key is not in the shard.
    fn push(&mut self, hash: u64, entry: T) {
        self.index.insert(hash, self.entries.len());
        self.entries.push(entry);
    }

    /// Removes the entry at position `at`, held by index slot `slot`; the last entry takes its
    /// place.
    fn remove_at(&mut self, slot: usize, at: usize, hasher: &Hasher) -> T {
        self.index.remove(slot);
        let last = self.entries.len() - 1;
        if at != last {
            let moved = hasher.hash_one(self.entries[last].key());
            if let Some(i) = self.index.find(moved, |i| i == last) {
                self.index.set(i, at);
            }
        }
        self.entries.swap_remove(at)
    }
}

pub(super) struct Table<T> {
    shards: Box<[RwLock<Shard<T>>]>,
    hasher: Hasher,
}

impl<T: Keyed> Table<T> {
    /// As many shards as dashmap would make: four per core, rounded up to a power of two.
    pub fn new() -> Table<T> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let shards = (cores * 4).next_power_of_two();
        Table {
            shards: (0..shards).map(|_| RwLock::default()).collect(),
            hasher: Hasher::default(),
        }
    }

    /// The key's hash and its shard, chosen by the low half, which the index does not use.
    fn locate(&self, key: &T::Key) -> (u64, &RwLock<Shard<T>>) {
        let hash = self.hasher.hash_one(key);
        (hash, &self.shards[hash as usize & (self.shards.len() - 1)])
    }

    fn read(shard: &RwLock<Shard<T>>) -> RwLockReadGuard<'_, Shard<T>> {
        shard.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(shard: &RwLock<Shard<T>>) -> RwLockWriteGuard<'_, Shard<T>> {
        shard.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// `f` of the entry of `key`, under its shard's read lock.
    pub fn get<R>(&self, key: &T::Key, f: impl FnOnce(&T) -> R) -> Option<R> {
        let (hash, shard) = self.locate(key);
        let shard = Self::read(shard);
        let at = shard.position(hash, key)?;
        Some(f(&shard.entries[at]))
    }

    pub fn contains(&self, key: &T::Key) -> bool {
        self.get(key, |_| ()).is_some()
    }

    /// `f` of the entry of `key`, under its shard's write lock.
    pub fn update<R>(&self, key: &T::Key, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let (hash, shard) = self.locate(key);
        let mut shard = Self::write(shard);
        let at = shard.position(hash, key)?;
        Some(f(&mut shard.entries[at]))
    }

    /// `f` of the entry of `key`, made by `make` if there is none; `make`'s entry must have `key`.
    pub fn upsert<R>(
        &self,
        key: &T::Key,
        make: impl FnOnce() -> T,
        f: impl FnOnce(&mut T) -> R,
    ) -> R {
        let (hash, shard) = self.locate(key);
        let mut shard = Self::write(shard);
        let at = match shard.position(hash, key) {
            Some(at) => at,
            None => {
                shard.push(hash, make());
                shard.entries.len() - 1
            }
        };
        f(&mut shard.entries[at])
    }

    /// Puts `entry` in, in place of the entry of the same key if there is one.
    pub fn insert(&self, entry: T) {
        let (hash, shard) = self.locate(entry.key());
        let mut shard = Self::write(shard);
        match shard.position(hash, entry.key()) {
            Some(at) => shard.entries[at] = entry,
            None => shard.push(hash, entry),
        }
    }

    pub fn remove(&self, key: &T::Key) -> Option<T> {
        self.remove_if(key, |_| true)
    }

    /// Removes the entry of `key` if `remove` says so.
    pub fn remove_if(&self, key: &T::Key, remove: impl FnOnce(&T) -> bool) -> Option<T> {
        let (hash, shard) = self.locate(key);
        let mut shard = Self::write(shard);
        let (slot, at) = shard.find(hash, key)?;
        if !remove(&shard.entries[at]) {
            return None;
        }
        Some(shard.remove_at(slot, at, &self.hasher))
    }

    /// Keeps the entries for which `keep` is true, one shard at a time.
    pub fn retain(&self, mut keep: impl FnMut(&mut T) -> bool) {
        for shard in &self.shards {
            let mut shard = Self::write(shard);
            let mut at = 0;
            while at < shard.entries.len() {
                if keep(&mut shard.entries[at]) {
                    at += 1;
                } else {
                    let hash = self.hasher.hash_one(shard.entries[at].key());
                    match shard.index.find(hash, |i| i == at) {
                        Some(slot) => drop(shard.remove_at(slot, at, &self.hasher)),
                        None => at += 1,
                    }
                }
            }
        }
    }

    /// `f` of every entry, one shard at a time under its read lock.
    pub fn for_each(&self, mut f: impl FnMut(&T)) {
        for shard in &self.shards {
            Self::read(shard).entries.iter().for_each(&mut f);
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| Self::read(s).entries.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Pair(u32, &'static str);

    impl Keyed for Pair {
        type Key = u32;
        fn key(&self) -> &u32 {
            &self.0
        }
    }

    #[test]
    fn removals_keep_every_other_entry_found() {
        let table = Table::new();
        for k in 0..1000 {
            table.insert(Pair(k, "a"));
        }
        table.insert(Pair(7, "b"));
        assert_eq!(table.len(), 1000, "a key is put in once");
        assert_eq!(table.get(&7, |p| p.1), Some("b"));
        assert_eq!(table.remove(&7), Some(Pair(7, "b")));
        assert_eq!(table.remove(&7), None);
        assert_eq!(table.remove_if(&8, |_| false), None);
        table.retain(|p| p.0 % 3 != 0);
        for k in 0..1000 {
            let kept = k != 7 && k % 3 != 0;
            assert_eq!(table.contains(&k), kept, "{k}");
        }
        let mut seen = 0;
        table.for_each(|_| seen += 1);
        assert_eq!(seen, table.len());
    }

    /// Inserts and removals at random against a `HashMap`, through growth and long probe runs.
    #[test]
    fn agrees_with_a_hash_map() {
        let table = Table::new();
        let mut model = std::collections::HashMap::new();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for step in 0..40_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = (x % 3000) as u32;
            if x % 5 < 3 {
                table.insert(Pair(k, "v"));
                model.insert(k, step);
            } else {
                assert_eq!(table.remove(&k).is_some(), model.remove(&k).is_some());
            }
            if step % 4000 == 0 {
                table.retain(|p| p.0 % 7 != 0);
                model.retain(|k, _| k % 7 != 0);
            }
        }
        assert_eq!(table.len(), model.len());
        for k in 0..3000 {
            assert_eq!(table.contains(&k), model.contains_key(&k), "{k}");
        }
    }

    #[test]
    fn upsert_makes_once_and_updates() {
        let table = Table::new();
        assert_eq!(table.upsert(&1, || Pair(1, "made"), |p| p.1), "made");
        assert_eq!(table.upsert(&1, || Pair(1, "again"), |p| p.1), "made");
        assert_eq!(table.update(&1, |p| p.1 = "set"), Some(()));
        assert_eq!(table.update(&2, |p| p.1 = "set"), None);
        assert_eq!(table.get(&1, |p| p.1), Some("set"));
    }
}
