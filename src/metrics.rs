//! Prometheus metrics (SPEC §8 `/metrics`): one registry, typed handles for each series.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Every series upgate exports (documented in the README's Metrics section).
pub struct Metrics {
    registry: Registry,
    pub requests: Family<ClassLabel, Counter>,
    /// The series of `requests` for 1xx..5xx, looked up once: a request adds to its class without
    /// the family's lock and label hashing.
    by_class: [Counter; 5],
    pub in_flight: Gauge,
    pub upstream_latency: Histogram,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub upstream_errors: Family<ReasonLabel, Counter>,
    pub registrations_without_identity: Counter,
    pub uploads: Family<ResultLabel, Counter>,
    pub stored_bytes: Counter,
    pub handles_live: Gauge,
    pub signature_failures: Family<ReasonLabel, Counter>,
    pub storage_free_bytes: Gauge,
    pub retention_files: Counter,
    pub retention_bytes: Counter,
}

/// Registers a metric and hands back the handle to update it.
fn add<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("upgate");
        let reg = &mut r;
        let requests: Family<ClassLabel, Counter> = add(
            reg,
            "requests",
            "Requests answered, by status class",
            Family::default(),
        );
        let by_class = ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .map(|class| requests.get_or_create(&ClassLabel { class }).clone());
        Self {
            requests,
            by_class,
            in_flight: add(
                reg,
                "requests_in_flight",
                "Requests being handled now",
                Gauge::default(),
            ),
            // 0.5 ms .. ~16 s
            upstream_latency: add(
                reg,
                "upstream_latency_seconds",
                "Time from sending a request upstream to its response headers",
                Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            ),
            bytes_in: add(
                reg,
                "received_bytes",
                "Request body bytes received from clients",
                Counter::default(),
            ),
            bytes_out: add(
                reg,
                "sent_bytes",
                "Response body bytes sent to clients",
                Counter::default(),
            ),
            upstream_errors: add(
                reg,
                "upstream_errors",
                "Upstream failures, by reason (bad_directive)",
                Family::default(),
            ),
            registrations_without_identity: add(
                reg,
                "registrations_without_identity",
                "X-Upgate-Register directives for requests with no identity (no handle issued)",
                Counter::default(),
            ),
            uploads: add(
                reg,
                "uploads",
                "Upload requests (API, intercepts, slots), by result: accepted or the error code",
                Family::default(),
            ),
            stored_bytes: add(
                reg,
                "stored_bytes",
                "Bytes of files accepted and stored",
                Counter::default(),
            ),
            handles_live: add(reg, "handles_live", "Live upload handles", Gauge::default()),
            signature_failures: add(
                reg,
                "signature_failures",
                "Signed URLs refused, by reason (bad_signature, expired, ttl_too_long)",
                Family::default(),
            ),
            storage_free_bytes: add(
                reg,
                "storage_free_bytes",
                "Free bytes on the filesystem of storage.root",
                Gauge::default(),
            ),
            retention_files: add(
                reg,
                "retention_removed_files",
                "Files removed by retention",
                Counter::default(),
            ),
            retention_bytes: add(
                reg,
                "retention_removed_bytes",
                "Bytes of files removed by retention",
                Counter::default(),
            ),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The `requests` series of a status code's class.
    pub fn requests_of(&self, status: http::StatusCode) -> &Counter {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5);
        &self.by_class[class - 1]
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_series() {
        let m = Metrics::new();
        m.requests.get_or_create(&ClassLabel { class: "2xx" }).inc();
        m.bytes_in.inc_by(10);
        let text = m.render();
        assert!(
            text.contains("upgate_requests_total{class=\"2xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("upgate_received_bytes_total 10"), "{text}");
        assert!(
            text.contains("upgate_upstream_latency_seconds_bucket"),
            "{text}"
        );
    }
}
