//! One exchange's access-log record: filled while the request runs, written once when its bodies are done.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Method;

use crate::metrics::{ClassLabel, Metrics};
use crate::server::Activity;

/// Shared by the request and response bodies; dropping the last holder logs the line and counts the metrics.
pub struct Exchange {
    pub id: String,
    method: Method,
    path: String,
    started: Instant,
    status: AtomicU16,
    pub bytes_in: Arc<AtomicU64>,
    pub bytes_out: Arc<AtomicU64>,
    upstream_micros: AtomicU64,
    metrics: Arc<Metrics>,
    activity: Arc<Activity>,
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
            bytes_in: Arc::default(),
            bytes_out: Arc::default(),
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
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let status = self.status.load(Ordering::Relaxed);
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        let bytes_out = self.bytes_out.load(Ordering::Relaxed);
        let upstream = self.upstream_micros.load(Ordering::Relaxed);
        let upstream_ms = (upstream != u64::MAX).then(|| upstream as f64 / 1000.0);
        let total_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        if let Ok(code) = http::StatusCode::from_u16(status) {
            let class = Metrics::class(code);
            self.metrics
                .requests
                .get_or_create(&ClassLabel { class })
                .inc();
        }
        self.metrics.in_flight.dec();
        self.metrics.bytes_in.inc_by(bytes_in);
        self.metrics.bytes_out.inc_by(bytes_out);
        self.activity.end();
        tracing::info!(
            target: "upgate::access",
            id = %self.id,
            method = %self.method,
            path = %self.path,
            status,
            bytes_in,
            bytes_out,
            total_ms = format_args!("{total_ms:.2}"),
            upstream_ms = ?upstream_ms.map(|ms| (ms * 100.0).round() / 100.0),
        );
    }
}
