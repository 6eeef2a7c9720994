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

/// Every series upgate exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<ClassLabel, Counter>,
    pub in_flight: Gauge,
    pub upstream_latency: Histogram,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub upstream_errors: Family<ReasonLabel, Counter>,
    pub registrations_without_identity: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("upgate");
        let requests = Family::<ClassLabel, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by status class",
            requests.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Requests being handled now",
            in_flight.clone(),
        );
        // 0.5 ms .. ~16 s
        let upstream_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "upstream_latency_seconds",
            "Time from sending a request upstream to its response headers",
            upstream_latency.clone(),
        );
        let bytes_in = Counter::default();
        registry.register(
            "received_bytes",
            "Request body bytes received from clients",
            bytes_in.clone(),
        );
        let bytes_out = Counter::default();
        registry.register(
            "sent_bytes",
            "Response body bytes sent to clients",
            bytes_out.clone(),
        );
        let upstream_errors = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream failures, by reason (unreachable, timeout, bad_directive)",
            upstream_errors.clone(),
        );
        let registrations_without_identity = Counter::default();
        registry.register(
            "registrations_without_identity",
            "X-Upgate-Register directives for requests with no identity (no handle issued)",
            registrations_without_identity.clone(),
        );
        Self {
            registry,
            registrations_without_identity,
            requests,
            in_flight,
            upstream_latency,
            bytes_in,
            bytes_out,
            upstream_errors,
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The label for a status code: "1xx" .. "5xx".
    pub fn class(status: http::StatusCode) -> &'static str {
        match status.as_u16() / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        }
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
