//! The flow record, in Hubble's `Flow` shape. Field names, enum spellings
//! and the JSON encoding follow protojson with proto field names (what
//! `hubble observe -o jsonpb` writes): zero values are omitted, enums are
//! strings, 64-bit integers are strings, times are RFC 3339 with
//! nanoseconds.

use serde::{Deserialize, Serialize};

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// Hubble's verdicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    #[default]
    VerdictUnknown,
    Forwarded,
    Dropped,
    Error,
    Audit,
    Redirected,
    Traced,
    Translated,
}

impl Verdict {
    pub fn is_unknown(&self) -> bool {
        *self == Verdict::VerdictUnknown
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::VerdictUnknown => "VERDICT_UNKNOWN",
            Verdict::Forwarded => "FORWARDED",
            Verdict::Dropped => "DROPPED",
            Verdict::Error => "ERROR",
            Verdict::Audit => "AUDIT",
            Verdict::Redirected => "REDIRECTED",
            Verdict::Traced => "TRACED",
            Verdict::Translated => "TRANSLATED",
        }
    }
    pub fn parse(s: &str) -> Option<Verdict> {
        Some(match s.to_ascii_uppercase().as_str() {
            "FORWARDED" => Verdict::Forwarded,
            "DROPPED" => Verdict::Dropped,
            "ERROR" => Verdict::Error,
            "AUDIT" => Verdict::Audit,
            "REDIRECTED" => Verdict::Redirected,
            "TRACED" => Verdict::Traced,
            "TRANSLATED" => Verdict::Translated,
            _ => return None,
        })
    }
}

/// Drop reasons Palisade produces (Hubble's `DropReason` names).
pub fn drop_reason_desc(code: u32) -> &'static str {
    match code {
        0 => "DROP_REASON_UNKNOWN",
        133 => "POLICY_DENIED",
        181 => "POLICY_DENY",
        189 => "AUTH_REQUIRED",
        _ => "DROP_REASON_UNKNOWN",
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrafficDirection {
    #[default]
    TrafficDirectionUnknown,
    Ingress,
    Egress,
}

impl TrafficDirection {
    pub fn is_unknown(&self) -> bool {
        *self == TrafficDirection::TrafficDirectionUnknown
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlowType {
    #[default]
    UnknownType,
    #[serde(rename = "L3_L4")]
    L3L4,
    L7,
    Sock,
}

impl FlowType {
    pub fn is_unknown(&self) -> bool {
        *self == FlowType::UnknownType
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ip {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination: String,
    #[serde(
        rename = "ipVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ip_version: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct TcpFlags {
    #[serde(default, skip_serializing_if = "is_false")]
    pub fin: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub syn: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub rst: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub psh: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub ack: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub source_port: u32,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub destination_port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<TcpFlags>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Icmp {
    #[serde(rename = "type", default, skip_serializing_if = "is_zero_u32")]
    pub icmp_type: u32,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub code: u32,
}

/// Layer 4: exactly one protocol is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer4 {
    #[serde(rename = "TCP", default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Ports>,
    #[serde(rename = "UDP", default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<Ports>,
    #[serde(rename = "SCTP", default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<Ports>,
    #[serde(rename = "ICMPv4", default, skip_serializing_if = "Option::is_none")]
    pub icmpv4: Option<Icmp>,
    #[serde(rename = "ICMPv6", default, skip_serializing_if = "Option::is_none")]
    pub icmpv6: Option<Icmp>,
}

impl Layer4 {
    /// (protocol name, source port, destination port or ICMP type).
    pub fn summary(&self) -> (&'static str, u32, u32) {
        if let Some(p) = &self.tcp {
            ("TCP", p.source_port, p.destination_port)
        } else if let Some(p) = &self.udp {
            ("UDP", p.source_port, p.destination_port)
        } else if let Some(p) = &self.sctp {
            ("SCTP", p.source_port, p.destination_port)
        } else if let Some(i) = &self.icmpv4 {
            ("ICMPv4", 0, i.icmp_type)
        } else if let Some(i) = &self.icmpv6 {
            ("ICMPv6", 0, i.icmp_type)
        } else {
            ("", 0, 0)
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub name: String,
    pub kind: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    #[serde(rename = "ID", default, skip_serializing_if = "is_zero_u32")]
    pub id: u32,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub identity: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<Workload>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// uint64 in the proto: a JSON string.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiliumEventType {
    #[serde(rename = "type", default)]
    pub event_type: i32,
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub sub_type: i32,
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderKv {
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Http {
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub code: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderKv>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub query: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cnames: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub rcode: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qtypes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rrtypes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kafka {
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub error_code: i32,
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub api_version: i32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_key: String,
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub correlation_id: i32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub topic: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum L7FlowType {
    #[default]
    UnknownL7Type,
    Request,
    Response,
    Sample,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer7 {
    #[serde(rename = "type", default)]
    pub l7_type: L7FlowType,
    /// uint64: a JSON string.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub latency_ns: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<Kafka>,
}

/// Palisade's extension (carried in `extensions`, a protobuf `Any`): the
/// exact rule sections that decided, and the sentence that explains it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyExplanation {
    #[serde(rename = "@type")]
    pub type_url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub explanation: String,
}

/// The `@type` of Palisade's extension.
pub const EXPLANATION_TYPE: &str = "type.googleapis.com/palisade.flow.v1.PolicyExplanation";

/// The encoding of `Flow.extensions`. In Hubble's proto it is a single
/// `google.protobuf.Any` (not repeated), so protojson writes one object
/// with an `@type`, never an array. Palisade fills it with one
/// explanation; several would be merged into one (rules concatenated,
/// sentences joined) rather than written as something a protobuf reader
/// rejects. Reading also accepts the array that Palisade wrote before, so
/// older flow files still load.
pub mod any_extension {
    use super::{EXPLANATION_TYPE, PolicyExplanation};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[PolicyExplanation], s: S) -> Result<S::Ok, S::Error> {
        match v {
            [one] => one.serialize(s),
            many => PolicyExplanation {
                type_url: EXPLANATION_TYPE.into(),
                rules: many.iter().flat_map(|e| e.rules.iter().cloned()).collect(),
                explanation: many
                    .iter()
                    .map(|e| e.explanation.as_str())
                    .filter(|t| !t.is_empty())
                    .collect::<Vec<_>>()
                    .join("; "),
            }
            .serialize(s),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PolicyExplanation),
        Many(Vec<PolicyExplanation>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<PolicyExplanation>, D::Error> {
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(e) => vec![e],
            OneOrMany::Many(v) => v,
        })
    }
}

/// Hubble's `Flow` (the subset Palisade fills).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uuid: String,
    #[serde(default, skip_serializing_if = "Verdict::is_unknown")]
    pub verdict: Verdict,
    /// Deprecated numeric drop reason, still written by Hubble.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub drop_reason: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub drop_reason_desc: String,
    #[serde(rename = "IP", default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ip>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4: Option<Layer4>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Endpoint>,
    #[serde(rename = "Type", default, skip_serializing_if = "FlowType::is_unknown")]
    pub flow_type: FlowType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<Layer7>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<CiliumEventType>,
    #[serde(default, skip_serializing_if = "TrafficDirection::is_unknown")]
    pub traffic_direction: TrafficDirection,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub policy_match_type: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_reply: Option<bool>,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub proxy_port: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_allowed_by: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_allowed_by: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_denied_by: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_denied_by: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_log: Vec<String>,
    /// Hubble's `extensions` is one `google.protobuf.Any`, so this is
    /// written as one JSON object (see [`any_extension`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "any_extension")]
    pub extensions: Vec<PolicyExplanation>,
    #[serde(rename = "Summary", default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
}

/// Hubble's `LostEvent`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostEvent {
    pub source: String,
    /// uint64: a JSON string.
    pub num_events_lost: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<i32>,
}

/// One line of `hubble observe -o jsonpb`: a `GetFlowsResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowsResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<Flow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_events: Option<LostEvent>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub time: String,
}

/// RFC 3339 UTC with nanoseconds, as protojson writes a Timestamp.
pub fn rfc3339(unix_ns: u128) -> String {
    let secs = (unix_ns / 1_000_000_000) as i64;
    let nanos = (unix_ns % 1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Parses the RFC 3339 times this crate writes (and Hubble's) to ns.
pub fn parse_rfc3339(s: &str) -> Option<u128> {
    let (date, rest) = s.split_once('T')?;
    let mut dp = date.split('-');
    let y: i64 = dp.next()?.parse().ok()?;
    let m: i64 = dp.next()?.parse().ok()?;
    let d: i64 = dp.next()?.parse().ok()?;
    let rest = rest.trim_end_matches('Z');
    let (hms, frac) = match rest.split_once('.') {
        Some((a, b)) => (a, b),
        None => (rest, "0"),
    };
    let mut tp = hms.split(':');
    let hh: i64 = tp.next()?.parse().ok()?;
    let mm: i64 = tp.next()?.parse().ok()?;
    let ss: i64 = tp.next()?.parse().ok()?;
    let frac: String = frac.chars().take_while(|c| c.is_ascii_digit()).collect();
    let nanos: u128 = format!("{frac:0<9}")[..9].parse().ok()?;
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u128::try_from(secs).ok().map(|s| s * 1_000_000_000 + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let t = 1_764_243_061_123_456_789u128;
        let s = rfc3339(t);
        assert_eq!(s, "2025-11-27T11:31:01.123456789Z");
        assert_eq!(parse_rfc3339(&s), Some(t));
    }

    #[test]
    fn json_uses_proto_names_and_omits_zero_values() {
        let f = Flow {
            verdict: Verdict::Dropped,
            drop_reason: 133,
            drop_reason_desc: "POLICY_DENIED".into(),
            ip: Some(Ip {
                source: "10.0.0.1".into(),
                destination: "10.0.0.2".into(),
                ip_version: "IPv4".into(),
            }),
            l4: Some(Layer4 {
                tcp: Some(Ports {
                    source_port: 1234,
                    destination_port: 80,
                    flags: Some(TcpFlags {
                        syn: true,
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            flow_type: FlowType::L3L4,
            traffic_direction: TrafficDirection::Ingress,
            ..Default::default()
        };
        let v = serde_json::to_value(&f).expect("json");
        assert_eq!(v["verdict"], "DROPPED");
        assert_eq!(v["IP"]["ipVersion"], "IPv4");
        assert_eq!(v["l4"]["TCP"]["flags"]["SYN"], true);
        assert_eq!(v["Type"], "L3_L4");
        assert_eq!(v["traffic_direction"], "INGRESS");
        assert!(v.get("uuid").is_none());
        let back: Flow = serde_json::from_value(v).expect("decode");
        assert_eq!(back, f);
    }

    #[test]
    fn extensions_is_one_any_object() {
        let e = |rule: &str, text: &str| PolicyExplanation {
            type_url: EXPLANATION_TYPE.into(),
            rules: vec![rule.into()],
            explanation: text.into(),
        };
        let mut f = Flow {
            extensions: vec![e(
                "CiliumNetworkPolicy default/p spec.ingress[0]",
                "allowed",
            )],
            ..Default::default()
        };
        let v = serde_json::to_value(&f).expect("json");
        assert_eq!(v["extensions"]["@type"], EXPLANATION_TYPE);
        assert_eq!(
            v["extensions"]["rules"][0],
            "CiliumNetworkPolicy default/p spec.ingress[0]"
        );
        let back: Flow = serde_json::from_value(v).expect("decode");
        assert_eq!(back, f);
        // Files written before (an array) still load.
        let old = serde_json::json!({"extensions": [{"@type": EXPLANATION_TYPE, "rules": ["r"]}]});
        let back: Flow = serde_json::from_value(old).expect("decode an array");
        assert_eq!(back.extensions[0].rules, vec!["r".to_string()]);
        // Several are merged into the one Any.
        f.extensions
            .push(e("CiliumNetworkPolicy default/q spec.egress[1]", "also"));
        let v = serde_json::to_value(&f).expect("json");
        assert_eq!(v["extensions"]["rules"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["extensions"]["explanation"], "allowed; also");
        assert!(
            serde_json::to_value(Flow::default())
                .expect("json")
                .get("extensions")
                .is_none()
        );
    }
}
