//! L7 flow records: one per request/response pair, delivered to a sink
//! the agent (or the observability layer) consumes, and logged with
//! `tracing` (target `palisade::l7`).

use palisade_policy::api::Direction;
use palisade_policy::identity::NumericIdentity;
use palisade_policy::mapstate::RuleRef;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// One side of an L7 flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7Peer {
    pub ip: std::net::IpAddr,
    pub port: u16,
    pub identity: NumericIdentity,
    pub labels: Arc<[String]>,
    /// The pod key when this side is a local endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl L7Peer {
    pub(crate) fn new(
        addr: SocketAddr,
        identity: NumericIdentity,
        labels: Arc<[String]>,
        endpoint: Option<String>,
    ) -> Self {
        L7Peer {
            ip: addr.ip(),
            port: addr.port(),
            identity,
            labels,
            endpoint,
        }
    }
}

/// Whether the request went to the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum L7Verdict {
    Forwarded,
    Dropped,
    /// Allowed by policy but the proxy could not complete it (upstream
    /// unreachable, limits): the client got a 5xx from the proxy.
    Error,
}

/// One request/response pair.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct L7Record {
    /// When the request head arrived.
    #[serde(with = "unix_nanos")]
    pub time: SystemTime,
    pub source: L7Peer,
    pub destination: L7Peer,
    /// The direction whose policy decided (ingress of the destination or
    /// egress of the source endpoint).
    pub direction: Option<Direction>,
    /// The endpoint whose policy decided.
    pub endpoint: Option<String>,
    pub method: String,
    /// `http://authority/path?query`.
    pub url: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: std::borrow::Cow<'static, str>,
    /// The status sent to the client (`None` if the exchange failed
    /// before a response).
    pub status: Option<u16>,
    /// gRPC status when the response carries one in its head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// From the request head to the response head.
    pub latency_ns: u64,
    pub verdict: L7Verdict,
    /// The deciding rules.
    pub rules: Vec<RuleRef>,
    /// The policy snapshot revision the decision used.
    pub policy_revision: u64,
}

/// Where records go. Cheap to clone; `emit` never blocks.
#[derive(Clone, Default)]
pub struct RecordSink {
    inner: Option<Arc<dyn Fn(L7Record) + Send + Sync>>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for RecordSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSink")
            .field("connected", &self.inner.is_some())
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish()
    }
}

impl RecordSink {
    /// A sink that discards records (they are still logged).
    pub fn none() -> Self {
        RecordSink::default()
    }

    /// A sink calling `f` for every record, on the proxy's threads: `f`
    /// must be fast and must not block.
    pub fn callback(f: impl Fn(L7Record) + Send + Sync + 'static) -> Self {
        RecordSink {
            inner: Some(Arc::new(f)),
            dropped: Arc::default(),
        }
    }

    /// A bounded channel: records beyond `capacity` unread ones are
    /// dropped (and counted) rather than slowing the proxy down.
    pub fn channel(capacity: usize) -> (Self, tokio::sync::mpsc::Receiver<L7Record>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let d2 = dropped.clone();
        let sink = RecordSink {
            inner: Some(Arc::new(move |r| {
                if tx.try_send(r).is_err() {
                    d2.fetch_add(1, Ordering::Relaxed);
                }
            })),
            dropped,
        };
        (sink, rx)
    }

    /// Records a full channel had to drop.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn emit(&self, r: L7Record, log: bool) {
        if log {
            tracing::info!(
                target: "palisade::l7",
                verdict = ?r.verdict,
                status = r.status,
                latency_us = r.latency_ns / 1000,
                src = %r.source.ip,
                src_identity = r.source.identity,
                dst = %r.destination.ip,
                dst_identity = r.destination.identity,
                endpoint = r.endpoint.as_deref().unwrap_or("-"),
                "{} {} {}",
                r.protocol,
                r.method,
                r.url
            );
        }
        if let Some(f) = &self.inner {
            f(r);
        }
    }
}

mod unix_nanos {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(UNIX_EPOCH + Duration::from_nanos(u64::deserialize(d)?))
    }

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ns = t
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        s.serialize_u64(ns)
    }
}
