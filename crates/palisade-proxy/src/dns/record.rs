//! DNS flow records (Hubble's `l7.dns`: query, ips, ttl, cnames, rcode,
//! qtypes, rrtypes) and the small sink both the DNS and the Kafka proxy
//! deliver their records to.

use crate::record::{L7Peer, L7Verdict};
use palisade_policy::api::Direction;
use palisade_policy::mapstate::RuleRef;
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// One DNS exchange (query and, when there was one, its answer).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsRecord {
    #[serde(with = "unix_nanos")]
    pub time: SystemTime,
    pub source: L7Peer,
    pub destination: L7Peer,
    /// `UDP` or `TCP`.
    pub transport: &'static str,
    pub direction: Option<Direction>,
    /// The endpoint whose policy decided.
    pub endpoint: Option<String>,
    /// The query name (lower case, trailing dot).
    pub query: String,
    /// `A`, `AAAA`, ... of the questions.
    pub qtypes: Vec<String>,
    /// The answer's rcode (`NoError`, `Refused`, ...), `None` when no
    /// answer reached the client.
    pub rcode: Option<String>,
    /// Addresses the answer carried (for the query name's chain).
    pub ips: Vec<IpAddr>,
    /// The smallest TTL of those addresses.
    pub ttl: u32,
    pub cnames: Vec<String>,
    /// Record types of the answer section.
    pub rrtypes: Vec<String>,
    pub verdict: L7Verdict,
    pub rules: Vec<RuleRef>,
    pub explanation: String,
    /// Query received to answer released, nanoseconds.
    pub latency_ns: u64,
    /// Of which: waiting for the learned addresses to be enforced.
    pub enforce_ns: u64,
    /// The upstream answer was truncated and the proxy asked again over TCP.
    pub tcp_fallback: bool,
    pub policy_revision: u64,
}

/// Where records go; cheap to clone; `emit` never blocks (the callback
/// must not either).
pub struct Sink<T> {
    inner: Option<Arc<dyn Fn(T) + Send + Sync>>,
}

impl<T> Clone for Sink<T> {
    fn clone(&self) -> Self {
        Sink {
            inner: self.inner.clone(),
        }
    }
}

impl<T> Default for Sink<T> {
    fn default() -> Self {
        Sink { inner: None }
    }
}

impl<T> std::fmt::Debug for Sink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("connected", &self.inner.is_some())
            .finish()
    }
}

impl<T> Sink<T> {
    /// Discards records.
    pub fn none() -> Self {
        Sink { inner: None }
    }

    /// Calls `f` for every record, on the proxy's threads.
    pub fn callback(f: impl Fn(T) + Send + Sync + 'static) -> Self {
        Sink {
            inner: Some(Arc::new(f)),
        }
    }

    /// Whether records go anywhere (else callers may skip building them).
    pub fn is_connected(&self) -> bool {
        self.inner.is_some()
    }

    pub fn emit(&self, r: T) {
        if let Some(f) = &self.inner {
            f(r);
        }
    }
}

/// The mnemonic of a record type.
pub fn type_name(t: u16) -> String {
    match t {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        41 => "OPT".into(),
        65 => "HTTPS".into(),
        255 => "ANY".into(),
        n => format!("TYPE{n}"),
    }
}

/// The name of a response code.
pub fn rcode_name(rcode: u8) -> String {
    match rcode {
        0 => "NoError".into(),
        1 => "FormErr".into(),
        2 => "ServFail".into(),
        3 => "NXDomain".into(),
        4 => "NotImp".into(),
        5 => "Refused".into(),
        n => format!("RCODE{n}"),
    }
}

mod unix_nanos {
    use serde::Serializer;
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ns = t
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        s.serialize_u64(ns)
    }
}
