//! Kafka flow records (Hubble's deprecated `l7.kafka`: error_code,
//! api_version, api_key, correlation_id, topic), one per request.

use crate::record::{L7Peer, L7Verdict};
use palisade_policy::api::Direction;
use palisade_policy::mapstate::RuleRef;
use serde::Serialize;
use std::time::SystemTime;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaRecord {
    #[serde(serialize_with = "unix_nanos")]
    pub time: SystemTime,
    pub source: L7Peer,
    pub destination: L7Peer,
    pub direction: Option<Direction>,
    pub endpoint: Option<String>,
    /// `produce`, `fetch`, ... (the number when unknown).
    pub api_key: String,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: String,
    pub topics: Vec<String>,
    pub verdict: L7Verdict,
    /// The error the proxy answered with (denied requests).
    pub error_code: Option<i16>,
    pub rules: Vec<RuleRef>,
    pub explanation: String,
    pub policy_revision: u64,
}

fn unix_nanos<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let ns = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    s.serialize_u64(ns)
}
