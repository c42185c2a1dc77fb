//! Prometheus metrics (prometheus-client), served by the agent.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    pub verdict: String,
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: String,
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxyLabels {
    pub protocol: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

/// Every metric Palisade exports, registered under the `palisade_` prefix.
pub struct Metrics {
    pub registry: Registry,
    pub flows: Family<FlowLabels, Counter>,
    pub drops: Family<DropLabels, Counter>,
    /// Policy map entries / capacity per endpoint (0..1).
    pub policy_map_pressure: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
    pub regeneration_seconds: Histogram,
    pub apply_to_enforced_seconds: Histogram,
    pub proxy_requests: Family<ProxyLabels, Counter>,
    pub proxy_latency_seconds: Histogram,
    pub dns_queries: Family<ProxyLabels, Counter>,
    pub lost_events: Family<SourceLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("palisade");
        let flows = Family::<FlowLabels, Counter>::default();
        registry.register(
            "flows_processed",
            "Flows by verdict and type",
            flows.clone(),
        );
        let drops = Family::<DropLabels, Counter>::default();
        registry.register(
            "drop_count",
            "Dropped packets by reason and direction",
            drops.clone(),
        );
        let policy_map_pressure = Family::<EndpointLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "policy_map_pressure",
            "Fill ratio of each endpoint's policy map capacity",
            policy_map_pressure.clone(),
        );
        let regeneration_seconds = Histogram::new(exponential_buckets(0.000_01, 4.0, 12));
        registry.register(
            "endpoint_regeneration_time_seconds",
            "Time to write the resolved policy of the changed endpoints to the datapath",
            regeneration_seconds.clone(),
        );
        let apply_to_enforced_seconds = Histogram::new(exponential_buckets(0.000_01, 4.0, 12));
        registry.register(
            "policy_apply_to_enforced_seconds",
            "Time from accepting a policy change to enforced: datapath maps written and L7 proxies confirmed",
            apply_to_enforced_seconds.clone(),
        );
        let proxy_requests = Family::<ProxyLabels, Counter>::default();
        registry.register(
            "proxy_requests",
            "L7 proxy requests by protocol and verdict",
            proxy_requests.clone(),
        );
        let proxy_latency_seconds = Histogram::new(exponential_buckets(0.000_01, 4.0, 12));
        registry.register(
            "proxy_upstream_latency_seconds",
            "Latency of proxied requests",
            proxy_latency_seconds.clone(),
        );
        let dns_queries = Family::<ProxyLabels, Counter>::default();
        registry.register(
            "dns_proxy_queries",
            "DNS proxy queries by verdict",
            dns_queries.clone(),
        );
        let lost_events = Family::<SourceLabels, Counter>::default();
        registry.register(
            "lost_events",
            "Events lost, by where they were lost",
            lost_events.clone(),
        );
        // Explicit zeros: a loss that never happened is still visible as 0.
        for source in [
            "PERF_EVENT_RING_BUFFER",
            "OBSERVER_EVENTS_QUEUE",
            "HUBBLE_RING_BUFFER",
        ] {
            let _ = lost_events.get_or_create(&SourceLabels {
                source: source.into(),
            });
        }
        Metrics {
            registry,
            flows,
            drops,
            policy_map_pressure,
            regeneration_seconds,
            apply_to_enforced_seconds,
            proxy_requests,
            proxy_latency_seconds,
            dns_queries,
            lost_events,
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.push_str("# error encoding metrics\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_prefixed_metrics() {
        let m = Metrics::new();
        m.drops
            .get_or_create(&DropLabels {
                reason: "POLICY_DENIED".into(),
                direction: "INGRESS".into(),
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains(
                "palisade_drop_count_total{reason=\"POLICY_DENIED\",direction=\"INGRESS\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("palisade_lost_events"));
    }
}
