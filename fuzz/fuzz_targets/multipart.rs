//! Fuzzes the multipart front end (`upload::ingest`) against a real temp area: a refused request
//! leaves no temp file; an accepted one holds files of exactly the sizes and digests it reports,
//! under sanitized names and within the policy's limits, and leaves nothing once dropped.
//!
//! Input: `BOUNDARY[ CHUNK][!]\nBODY`: the body arrives in CHUNK-byte pieces (whole when absent),
//! and with `!` the stream fails after the last piece, as a client that disconnects.
#![no_main]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use libfuzzer_sys::fuzz_target;
use upgate::config::FORMAT_NAMES;
use upgate::upload::ingest::{Ingested, Policy, ingest};
use upgate::upload::names::sanitize;
use upgate::upload::store::Store;

const MAX_FILE: u64 = 2048;
const MAX_TOTAL: u64 = 8192;
const MAX_FILES: u64 = 4;

struct Bench {
    store: Store,
    runtime: tokio::runtime::Runtime,
    policy: Policy,
}

/// One store for the whole run: opening the state database per input would drown the fuzzing.
fn bench() -> &'static Bench {
    static BENCH: OnceLock<Bench> = OnceLock::new();
    BENCH.get_or_init(|| Bench {
        store: Store::open(&store_root()).expect("store"),
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
        policy: Policy {
            accept: upgate::upload::formats(&FORMAT_NAMES.map(String::from)),
            max_file_bytes: MAX_FILE,
            max_total_bytes: MAX_TOTAL,
            max_files: MAX_FILES,
            existing: HashMap::from([("a.txt".to_string(), 1000), ("b.pdf".to_string(), 3000)]),
            body_timeout: std::time::Duration::from_secs(60),
        },
    })
}

/// A folder per process in memory when there is a tmpfs (every part is fsynced), removing those
/// of earlier runs: libFuzzer exits without running destructors.
fn store_root() -> PathBuf {
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let prefix = "upgate-fuzz-multipart-";
    for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(prefix)
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    base.join(format!("{prefix}{}", std::process::id()))
}

fn temp_files(store: &Store) -> usize {
    std::fs::read_dir(store.temp_dir())
        .expect("temp area")
        .count()
}

/// The request: headers with the boundary, and the body as a stream of chunks.
fn request(data: &[u8]) -> (HeaderMap, upgate::body::Body) {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (String::from_utf8_lossy(&data[..i]), &data[i + 1..]),
        None => (String::from_utf8_lossy(data), &[][..]),
    };
    let fails = head.ends_with('!');
    let head = head.trim_end_matches('!');
    let (boundary, chunk) = head.split_once(' ').unwrap_or((head, ""));
    let chunk = chunk.parse::<usize>().unwrap_or(body.len()).max(1);
    let mut headers = HeaderMap::new();
    let ct = format!("multipart/form-data; boundary={boundary}");
    if let Ok(v) = http::HeaderValue::from_str(&ct) {
        headers.insert(http::header::CONTENT_TYPE, v);
    }
    let mut frames: Vec<Result<Frame<Bytes>, std::io::Error>> = body
        .chunks(chunk)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    if fails {
        frames.push(Err(std::io::Error::other("client went away")));
    }
    let stream = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    (headers, upgate::body::boxed(stream))
}

fn check_accepted(got: &Ingested, policy: &Policy) {
    assert!(!got.parts.is_empty());
    let mut freed = 0;
    let mut new_names = 0;
    for (i, part) in got.parts.iter().enumerate() {
        let bytes = std::fs::read(part.temp.path()).expect("the part's temp file");
        assert_eq!(bytes.len() as u64, part.size, "{}", part.name);
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        assert_eq!(part.sha256, hex(digest.as_ref()), "{}", part.name);
        assert!(part.size <= policy.max_file_bytes);
        assert_eq!(sanitize(&part.name).as_deref(), Some(part.name.as_str()));
        assert!(
            got.parts[..i].iter().all(|p| p.name != part.name),
            "{} twice",
            part.name
        );
        assert!(policy.accept.contains(&part.format));
        match policy.existing.get(&part.name) {
            Some(old) => freed += old,
            None => new_names += 1,
        }
    }
    let used: u64 = policy.existing.values().sum();
    let total: u64 = got.parts.iter().map(|p| p.size).sum();
    assert!(
        total <= policy.max_total_bytes - used + freed,
        "quota: {total}"
    );
    assert!(policy.existing.len() as u64 + new_names <= policy.max_files);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fuzz_target!(|data: &[u8]| {
    let bench = bench();
    let (headers, body) = request(data);
    let outcome = bench
        .runtime
        .block_on(ingest(&bench.store, &headers, body, &bench.policy));
    if let Ok(got) = outcome {
        check_accepted(&got, &bench.policy);
        assert_eq!(temp_files(&bench.store), got.parts.len());
        drop(got);
    }
    assert_eq!(
        temp_files(&bench.store),
        0,
        "a temp file outlived its request"
    );
});
