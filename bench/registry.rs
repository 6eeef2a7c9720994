//! The handle registry's benchmark (bench/run, item 5): resolves per second on one thread with a
//! million live handles, and the resident memory each handle costs.
//!
//! `cargo bench --bench registry [-- HANDLES [ROUNDS [TOKEN_BYTES]]]` prints one line:
//! `handles=N resolves_per_sec=R session_resolves_per_sec=S bytes_per_handle=B memory_latency_ns=L
//! latencies_per_resolve=K` (medians of ROUNDS passes over every handle). R is
//! `Registry::resolve_token`, what the proxy does for every request that carries a handle; S is
//! `Registry::resolve`, the token and the limits, what the upload routes do. L is one
//! cache-missing load on this machine now, so K, a resolve's time in such loads, says what the
//! machine's memory costs and what the code does.
//!
//! Each handle has its own session token and client, as when every browser uploads in its own
//! session (the costliest case for memory), and the limits of a typical registration
//! (`accept=pdf,png; max-bytes=10MiB; max-files=20`). A token is 47 bytes, or TOKEN_BYTES if that
//! is more (64: a hex SHA-256, the longest a slot holds; more: kept beside the slots). Handles are resolved in a shuffled order, as
//! clients come back: in the order they were made, a registry that keeps its entries (or the
//! allocator its tokens) in that order would be read sequentially, which no real load does.

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use upgate::db::Limits;
use upgate::handles::Registry;

/// Resident memory of this process in bytes, from /proc/self/status.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A deterministic stream of 16-byte values, as b64url (the shape of handles and client keys).
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> String {
        let mut bytes = [0u8; 16];
        for chunk in bytes.chunks_mut(8) {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            chunk.copy_from_slice(&(self.0 ^ (self.0 >> 29)).to_le_bytes());
        }
        URL_SAFE_NO_PAD.encode(bytes)
    }
}

/// A deterministic Fisher-Yates shuffle (xorshift64).
fn shuffle<T>(items: &mut [T], mut x: u64) {
    for i in (1..items.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        items.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

/// The time of one load from memory that misses every cache: a chase through a random cycle over
/// 64 MiB, each load's address given by the one before. What a resolve of a cold handle waits on.
fn memory_latency_ns() -> f64 {
    let n = 16 << 20;
    let mut next: Vec<u32> = (0..n as u32).collect();
    // Sattolo's shuffle: one cycle through every slot.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        next.swap(i, (x % i as u64) as usize);
    }
    let steps = 4_000_000;
    let mut at = 0u32;
    let started = Instant::now();
    for _ in 0..steps {
        at = next[at as usize];
    }
    black_box(at);
    started.elapsed().as_nanos() as f64 / steps as f64
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let token_bytes: Option<usize> = args.next().and_then(|a| a.parse().ok());
    let now = 1_800_000_000u64;
    let mut ids = Ids(7);
    let clients: Vec<String> = (0..n).map(|_| ids.next()[..22].to_string()).collect();
    let tokens: Vec<String> = (0..n)
        .map(|i| {
            let token = format!("session-{i:016x}-{}", ids.next());
            match token_bytes {
                Some(len) => format!("{token:0>len$}"),
                None => token,
            }
        })
        .collect();
    let limits = Limits {
        accept: Some(vec!["pdf".into(), "png".into()]),
        max_bytes: Some(10 << 20),
        max_files: Some(20),
    };

    // The handles' texts, in place before the memory is measured (28 bytes each, written so that
    // their pages are resident), so that the measure is the registry's alone.
    let mut handles = vec![[b'-'; 28]; n];
    let before = rss();
    let registry = Registry::new(Duration::from_secs(3600));
    // Registered as the gateway does, a handle at a time, less the database's writes.
    for (i, slot) in handles.iter_mut().enumerate() {
        let (handle, _) = registry
            .register_in_memory(&tokens[i], &clients[i], limits.clone(), now)
            .expect("registered");
        slot.copy_from_slice(handle.as_bytes());
    }
    let bytes_per_handle = rss().saturating_sub(before) as f64 / n as f64;
    assert_eq!(registry.len(), n);
    let text = |h: &[u8; 28]| {
        std::str::from_utf8(h)
            .expect("a handle is ASCII")
            .to_string()
    };
    // Copies in the shuffled order, so the benchmark's own strings are read sequentially.
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, 0x9E37_79B9_7F4A_7C15);
    let visits: Vec<(String, String)> = order
        .iter()
        .map(|&i| (text(&handles[i]), clients[i].clone()))
        .collect();

    // The proxy's resolve (token only), then the upload routes' (token and limits).
    let token_rates = measure(rounds, n, |round| {
        visits
            .iter()
            .filter(|(h, c)| black_box(registry.resolve_token(h, c, now + round)).is_some())
            .count()
    });
    let session_rates = measure(rounds, n, |round| {
        visits
            .iter()
            .filter(|(h, c)| black_box(registry.resolve(h, c, now + round)).is_some())
            .count()
    });
    // A foreign client must not resolve a handle, whatever the speed.
    assert!(
        registry
            .resolve(&text(&handles[0]), &clients[1], now)
            .is_none()
    );
    assert!(
        registry
            .resolve_token(&text(&handles[0]), &clients[1], now)
            .is_none()
    );
    let median = |r: &[f64]| r[r.len() / 2];
    let latency = memory_latency_ns();
    println!(
        "handles={n} resolves_per_sec={:.0} session_resolves_per_sec={:.0} \
         bytes_per_handle={bytes_per_handle:.0} memory_latency_ns={latency:.0} \
         latencies_per_resolve={:.1} rounds={} session_rounds={}",
        median(&token_rates),
        median(&session_rates),
        1e9 / median(&token_rates) / latency,
        millions(&token_rates),
        millions(&session_rates),
    );
}

/// The rates of `rounds` passes of `pass` (given the round's number, returning how many of the
/// `n` handles resolved), sorted.
fn measure(rounds: usize, n: usize, pass: impl Fn(u64) -> usize) -> Vec<f64> {
    let mut rates: Vec<f64> = (0..rounds as u64)
        .map(|round| {
            let started = Instant::now();
            let found = pass(round);
            let secs = started.elapsed().as_secs_f64();
            assert_eq!(found, n, "every handle resolves");
            n as f64 / secs
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates
}

fn millions(rates: &[f64]) -> String {
    rates
        .iter()
        .map(|r| format!("{:.2}M", r / 1e6))
        .collect::<Vec<_>>()
        .join(",")
}
