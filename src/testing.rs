//! Test support shared by the unit tests: a deterministic generator for the property tests.

/// Xorshift64: enough randomness to explore an input space, with no crate, and the same
/// sequence every run so that a failure repeats.
pub struct XorShift(u64);

impl XorShift {
    /// Any seed but zero (zero is xorshift's one fixed point).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }

    /// One of `items`.
    pub fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }

    /// Up to `max` picks of `pieces`, concatenated.
    pub fn string(&mut self, pieces: &[&str], max: usize) -> String {
        let n = self.below(max + 1);
        (0..n).map(|_| self.pick(pieces)).collect()
    }
}
