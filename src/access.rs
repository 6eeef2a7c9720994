//! One exchange's access-log record: filled while the request runs, written once when its bodies are done.
//!
//! The line is formatted by hand into a per-thread buffer: this is the one log line every request
//! pays for, and the generic formatter of `tracing` cost more than the rest of a proxied request's
//! own work (callgrind: 14,000 of 87,000 instructions per request). Public worker threads keep
//! their lines for up to [`FLUSH_EVERY`] or [`FLUSH_BYTES`], as nginx's `access_log ... buffer=`
//! and Envoy's access logs do, and so write once for many requests; every other thread writes each
//! line at once. From the drain on, workers write each line at once too, and a drain returns only
//! once every worker has written what it kept.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::Method;

use crate::metrics::Metrics;
use crate::server::Activity;

/// How long a worker may keep access lines before writing them.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How many bytes of lines a worker keeps at most before writing them.
const FLUSH_BYTES: usize = 16 << 10;

/// Where access lines go: the process's log sink, set once by the binary; none in the library's tests.
static SINK: OnceLock<std::fs::File> = OnceLock::new();

/// Sends access lines to `sink` (the binary passes its own handle on standard error).
pub fn set_sink(sink: std::fs::File) {
    let _ = SINK.set(sink);
}

struct Lines {
    buf: String,
    /// Whether this thread keeps lines (a public worker) or writes each at once.
    buffered: bool,
    /// The time of the last line to the second (`2026-11-21T17:58:01`), and that second.
    stamp: String,
    stamp_secs: u64,
}

impl Drop for Lines {
    /// A thread that ends writes what it kept.
    fn drop(&mut self) {
        write_out(&mut self.buf);
    }
}

thread_local! {
    static LINES: RefCell<Lines> = const {
        RefCell::new(Lines {
            buf: String::new(),
            buffered: false,
            stamp: String::new(),
            stamp_secs: u64::MAX,
        })
    };
}

/// Makes this thread keep its access lines until [`flush`] (a public worker, which runs
/// [`flush_ticks`] and flushes when it stops).
pub fn buffer_on_this_thread() {
    LINES.with(|l| l.borrow_mut().buffered = true);
}

/// Makes this thread write each access line at once again, writing what it kept.
pub fn stop_buffering() {
    LINES.with(|l| {
        let mut lines = l.borrow_mut();
        lines.buffered = false;
        write_out(&mut lines.buf);
    });
}

/// Writes the lines this thread keeps.
pub fn flush() {
    LINES.with(|l| {
        let mut lines = l.borrow_mut();
        write_out(&mut lines.buf);
    });
}

thread_local! {
    /// Told when this thread starts keeping lines again, so [`flush_ticks`] sleeps while idle.
    static KEEPING: Arc<tokio::sync::Notify> = Arc::new(tokio::sync::Notify::new());
}

/// Writes this thread's lines [`FLUSH_EVERY`] after the first of them was kept, forever
/// (spawned on each worker's runtime). An idle worker is not woken at all.
pub async fn flush_ticks() {
    let keeping = KEEPING.with(Arc::clone);
    loop {
        keeping.notified().await;
        tokio::time::sleep(FLUSH_EVERY).await;
        flush();
    }
}

/// The most one `write` carries: a pipe keeps a write of up to `PIPE_BUF` (4 KiB on Linux)
/// whole, so the lines of two workers never interleave mid-line.
const WRITE_MAX: usize = 4096;

fn write_out(buf: &mut String) {
    if buf.is_empty() {
        return;
    }
    if let Some(mut sink) = SINK.get() {
        // A log sink that fails (a closed journal pipe) loses lines; the request goes on.
        for piece in pieces(buf.as_bytes(), WRITE_MAX) {
            let _ = sink.write_all(piece);
        }
    }
    buf.clear();
}

/// `bytes` (whole lines) cut at line ends into pieces of at most `max` bytes; a longer line is a
/// piece of its own.
fn pieces(bytes: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let window = &rest[..rest.len().min(max)];
        let end = if window.len() == rest.len() {
            rest.len()
        } else {
            match window.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |i| i + 1),
            }
        };
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

/// Shared by the request and response bodies; dropping the last holder logs the line and counts the metrics.
pub struct Exchange {
    pub id: String,
    method: Method,
    path: String,
    started: Instant,
    status: AtomicU16,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    upstream_micros: AtomicU64,
    metrics: Arc<Metrics>,
    activity: Arc<Activity>,
}

/// The request body's bytes, counted into its exchange.
pub struct Received(pub Arc<Exchange>);
/// The response body's bytes, counted into its exchange.
pub struct Sent(pub Arc<Exchange>);

impl crate::body::Tally for Received {
    fn add(&self, bytes: u64) {
        self.0.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl crate::body::Tally for Sent {
    fn add(&self, bytes: u64) {
        self.0.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Exchange {
    pub fn begin(
        id: String,
        method: Method,
        path: String,
        metrics: Arc<Metrics>,
        activity: Arc<Activity>,
    ) -> Self {
        metrics.in_flight.inc();
        activity.begin();
        Self {
            id,
            method,
            path,
            started: Instant::now(),
            status: AtomicU16::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            upstream_micros: AtomicU64::new(u64::MAX),
            metrics,
            activity,
        }
    }

    pub fn set_status(&self, status: http::StatusCode) {
        self.status.store(status.as_u16(), Ordering::Relaxed);
    }

    /// Records the time the upstream took to answer with headers.
    pub fn set_upstream_time(&self, took: Duration) {
        self.metrics.upstream_latency.observe(took.as_secs_f64());
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX - 1);
        self.upstream_micros.store(micros, Ordering::Relaxed);
    }

    /// The access line: `<RFC 3339 time>  INFO upgate::access: id=… method=… path=… status=…
    /// bytes_in=… bytes_out=… total_ms=… upstream_ms=…` (`-` when the upstream was not asked),
    /// the shape of upgate's other log lines. The path is as hyper parsed it: no spaces or
    /// control characters can be in it.
    fn line(&self, out: &mut String, stamp: &mut String, stamp_secs: &mut u64) {
        let status = self.status.load(Ordering::Relaxed);
        let total = self.started.elapsed();
        let upstream = self.upstream_micros.load(Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if now.as_secs() != *stamp_secs {
            // The date and time to the second change once a second: formatted then, not per line.
            *stamp_secs = now.as_secs();
            stamp.clear();
            let seconds = humantime::format_rfc3339_seconds(UNIX_EPOCH + now).to_string();
            stamp.push_str(seconds.trim_end_matches('Z'));
        }
        // By hand: `write!` with its arguments costs several times as much per line.
        out.push_str(stamp);
        out.push('.');
        digits(out, u64::from(now.subsec_micros()), 6);
        out.push_str("Z  INFO upgate::access: id=");
        out.push_str(&self.id);
        out.push_str(" method=");
        out.push_str(self.method.as_str());
        out.push_str(" path=");
        out.push_str(&self.path);
        out.push_str(" status=");
        digits(out, u64::from(status), 1);
        out.push_str(" bytes_in=");
        digits(out, self.bytes_in.load(Ordering::Relaxed), 1);
        out.push_str(" bytes_out=");
        digits(out, self.bytes_out.load(Ordering::Relaxed), 1);
        out.push_str(" total_ms=");
        millis(out, u64::try_from(total.as_micros()).unwrap_or(u64::MAX));
        out.push_str(" upstream_ms=");
        if upstream == u64::MAX {
            out.push('-');
        } else {
            millis(out, upstream);
        }
        out.push('\n');
    }
}

/// Microseconds as milliseconds with two decimals (`1234` → `1.23`).
fn millis(out: &mut String, micros: u64) {
    let hundredths = micros / 10;
    digits(out, hundredths / 100, 1);
    out.push('.');
    digits(out, hundredths % 100, 2);
}

/// `n` in decimal, with leading zeros up to `width` digits.
fn digits(out: &mut String, n: u64, width: usize) {
    let mut buf = [0; 20];
    let text = decimal(n, &mut buf);
    for _ in text.len()..width {
        out.push('0');
    }
    out.push_str(text);
}

/// `n` in decimal, written into `buf`: by hand, as numbers are written on every request, and
/// the formatting machinery costs several times as much.
pub(crate) fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut start = buf.len();
    loop {
        start -= 1;
        // A digit: `n % 10` < 10.
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits only, so always UTF-8.
    std::str::from_utf8(&buf[start..]).unwrap_or_default()
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let status = self.status.load(Ordering::Relaxed);
        if let Ok(code) = http::StatusCode::from_u16(status) {
            self.metrics.requests_of(code).inc();
        }
        self.metrics.in_flight.dec();
        self.metrics
            .bytes_in
            .inc_by(self.bytes_in.load(Ordering::Relaxed));
        self.metrics
            .bytes_out
            .inc_by(self.bytes_out.load(Ordering::Relaxed));
        self.activity.end();
        if !tracing::enabled!(target: "upgate::access", tracing::Level::INFO) {
            return;
        }
        LINES.with(|l| {
            let mut lines = l.borrow_mut();
            let Lines {
                buf,
                buffered,
                stamp,
                stamp_secs,
            } = &mut *lines;
            let first = buf.is_empty();
            self.line(buf, stamp, stamp_secs);
            if !*buffered || buf.len() >= FLUSH_BYTES {
                write_out(buf);
            } else if first {
                KEEPING.with(|keeping| keeping.notify_one());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_written_as_display_writes_them() {
        for n in [0, 7, 10, 99, 1_700_000_000, u64::MAX] {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string());
            let mut out = String::new();
            digits(&mut out, n, 6);
            assert_eq!(out, format!("{n:06}"));
        }
    }

    #[test]
    fn pieces_end_at_line_ends() {
        let text = "aaa\nbb\ncccccc\nd\n";
        let cut: Vec<&str> = pieces(text.as_bytes(), 8)
            .map(|p| std::str::from_utf8(p).expect("utf-8"))
            .collect();
        assert_eq!(cut, ["aaa\nbb\n", "cccccc\n", "d\n"]);
        let long: Vec<&[u8]> = pieces(b"0123456789\nab\n", 4).collect();
        assert_eq!(long, [&b"0123456789\n"[..], &b"ab\n"[..]]);
        assert_eq!(pieces(b"", 4).count(), 0);
    }

    #[test]
    fn millis_with_two_decimals() {
        for (micros, shown) in [
            (0, "0.00"),
            (9, "0.00"),
            (1234, "1.23"),
            (60_000_000, "60000.00"),
        ] {
            let mut s = String::new();
            millis(&mut s, micros);
            assert_eq!(s, shown);
        }
        for (n, width, shown) in [
            (7, 6, "000007"),
            (0, 1, "0"),
            (u64::MAX, 1, "18446744073709551615"),
        ] {
            let mut s = String::new();
            digits(&mut s, n, width);
            assert_eq!(s, shown);
        }
    }

    #[test]
    fn the_line_names_every_field() {
        let ex = Exchange::begin(
            "req-1".into(),
            Method::POST,
            "/a/b".into(),
            Arc::new(Metrics::new()),
            Arc::new(Activity::new()),
        );
        ex.set_status(http::StatusCode::CREATED);
        let ex = Arc::new(ex);
        crate::body::Tally::add(&Received(ex.clone()), 10);
        crate::body::Tally::add(&Sent(ex.clone()), 20);
        let (mut line, mut stamp, mut secs) = (String::new(), String::new(), u64::MAX);
        ex.line(&mut line, &mut stamp, &mut secs);
        assert!(line.ends_with('\n'));
        // An RFC 3339 time with microseconds first: 2026-11-21T17:58:01.123456Z.
        let time = line.split_once("  ").expect("time").0;
        assert_eq!(time.len(), 27, "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
        humantime::parse_rfc3339(time).expect("an RFC 3339 time");
        let fields = line
            .split_once("  INFO upgate::access: ")
            .expect("prefix")
            .1;
        assert!(
            fields.starts_with(
                "id=req-1 method=POST path=/a/b status=201 bytes_in=10 bytes_out=20 total_ms="
            ),
            "{fields}"
        );
        assert!(fields.trim_end().ends_with("upstream_ms=-"), "{fields}");
        ex.set_upstream_time(Duration::from_micros(1500));
        line.clear();
        ex.line(&mut line, &mut stamp, &mut secs);
        assert!(line.trim_end().ends_with("upstream_ms=1.50"), "{line}");
    }
}
