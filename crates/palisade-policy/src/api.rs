//! The validated policy model. Values of these types can only be built by
//! `manifest` decoding, which checks every rule Cilium checks (and more), so
//! the rest of the crate trusts them.

use crate::l7::{DnsRule, HttpRules, KafkaRule};
use crate::node::Pos;
use crate::selector::Selector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// What kind of object a policy came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    NetworkPolicy,
}

impl PolicyKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            PolicyKind::NetworkPolicy => "NetworkPolicy",
        }
    }
    pub fn is_namespaced(&self) -> bool {
        !matches!(self, PolicyKind::CiliumClusterwideNetworkPolicy)
    }
}

/// Names a policy: kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyId {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind.as_str(), ns, self.name),
            None => write!(f, "{} {}", self.kind.as_str(), self.name),
        }
    }
}

/// A policy object: one or more rules.
#[derive(Clone, Debug, Serialize)]
pub struct Policy {
    pub id: PolicyId,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub rules: Vec<Rule>,
    #[serde(skip)]
    pub file: String,
    #[serde(skip)]
    pub pos: Pos,
}

/// Which endpoints a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Subject {
    EndpointSelector(Selector),
    NodeSelector(Selector),
}

/// Per-direction default-deny contribution of a rule: `None` when the rule
/// has no entries in that direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DefaultDeny {
    pub ingress: Option<bool>,
    pub egress: Option<bool>,
}

/// One rule (`spec`, `specs[i]`, or one translated NetworkPolicy).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Where the rule sits in its object: `spec`, `specs[1]`, `[0]`.
    pub section: String,
    pub subject: Subject,
    pub ingress: Vec<PeerRule>,
    pub egress: Vec<PeerRule>,
    pub default_deny: DefaultDeny,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(&self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One ingress/egress (allow or deny) element.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRule {
    /// `ingress[0]`, `egressDeny[2]`.
    pub section: String,
    pub deny: bool,
    pub peers: Peers,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub icmps: Vec<IcmpField>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthMode>,
}

impl PeerRule {
    /// Whether the element has any L4 part (ports or ICMP types).
    pub fn has_l4(&self) -> bool {
        !self.to_ports.is_empty() || !self.icmps.is_empty()
    }
}

/// The L3 part of a rule element. At most one kind per element.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Peers {
    /// No L3 member: every peer when the element has ports, else nothing.
    Absent,
    /// Every identity, world included (entity `all`, empty NetworkPolicy peer).
    All,
    Endpoints(Vec<Selector>),
    Cidr(Vec<CidrRule>),
    CidrSet(Vec<CidrRule>),
    Entities(Vec<Entity>),
    Nodes(Vec<Selector>),
    Services(Vec<ServiceRef>),
    Fqdns(Vec<FqdnSelector>),
    /// `toGroups`: parsed, reported as unsupported where it is resolved.
    Groups(usize),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CidrSource {
    Cidr(Cidr),
    CidrGroupRef(String),
    CidrGroupSelector(Selector),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CidrRule {
    pub source: CidrSource,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<Cidr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ServiceRef {
    K8sService {
        name: String,
        namespace: Option<String>,
    },
    K8sServiceSelector {
        selector: Selector,
        namespace: Option<String>,
    },
    /// An entry that names no service: selects nothing.
    Empty,
}

/// A `toFQDNs` entry or DNS rule name matcher.
#[derive(Clone, Debug, Serialize)]
pub struct FqdnSelector {
    #[serde(rename = "matchName", skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    #[serde(rename = "matchPattern", skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
    #[serde(skip)]
    pub matcher: crate::fqdn::NameMatcher,
}

impl FqdnSelector {
    pub fn matches(&self, name: &str) -> bool {
        self.matcher.matches(name)
    }
}

impl fmt::Display for FqdnSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.match_name, &self.match_pattern) {
            (Some(n), _) => write!(f, "matchName: {n}"),
            (_, Some(p)) => write!(f, "matchPattern: {p}"),
            _ => f.write_str("(empty)"),
        }
    }
}

/// Reserved entities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    All,
    World,
    Cluster,
    Host,
    RemoteNode,
    KubeApiserver,
    Ingress,
    Init,
    Health,
    Unmanaged,
    None,
}

impl Entity {
    pub const NAMES: &'static [&'static str] = &[
        "all",
        "world",
        "cluster",
        "host",
        "remote-node",
        "kube-apiserver",
        "ingress",
        "init",
        "health",
        "unmanaged",
        "none",
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "all" => Entity::All,
            "world" => Entity::World,
            "cluster" => Entity::Cluster,
            "host" => Entity::Host,
            "remote-node" => Entity::RemoteNode,
            "kube-apiserver" => Entity::KubeApiserver,
            "ingress" => Entity::Ingress,
            "init" => Entity::Init,
            "health" => Entity::Health,
            "unmanaged" => Entity::Unmanaged,
            "none" => Entity::None,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Entity::All => "all",
            Entity::World => "world",
            Entity::Cluster => "cluster",
            Entity::Host => "host",
            Entity::RemoteNode => "remote-node",
            Entity::KubeApiserver => "kube-apiserver",
            Entity::Ingress => "ingress",
            Entity::Init => "init",
            Entity::Health => "health",
            Entity::Unmanaged => "unmanaged",
            Entity::None => "none",
        }
    }
}

/// An IP prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/len`, `v6/len`, or a bare address (a host prefix).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr_s, len_s) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s
            .parse()
            .map_err(|_| format!("invalid CIDR \"{s}\": \"{addr_s}\" is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len_s {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && !l.starts_with('+') => n,
                _ => {
                    return Err(format!(
                        "invalid CIDR \"{s}\": prefix length must be 0 to {max}"
                    ));
                }
            },
        };
        Ok(Cidr::new(addr, len))
    }

    pub fn new(addr: IpAddr, len: u8) -> Cidr {
        let addr = match addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                IpAddr::V6((bits & mask).into())
            }
        };
        Cidr { addr, len }
    }

    pub fn host(addr: IpAddr) -> Cidr {
        Cidr::new(addr, if addr.is_ipv4() { 32 } else { 128 })
    }

    pub fn contains_addr(&self, ip: IpAddr) -> bool {
        Cidr::new(ip, self.len).addr == self.addr && ip.is_ipv4() == self.addr.is_ipv4()
    }

    /// Whether `other` lies entirely inside this prefix.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains_addr(other.addr)
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// L4 protocols of a port rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Protocol {
    TCP,
    UDP,
    SCTP,
    ICMP,
    ICMPv6,
    VRRP,
    IGMP,
}

impl Protocol {
    pub fn number(&self) -> u8 {
        match self {
            Protocol::TCP => 6,
            Protocol::UDP => 17,
            Protocol::SCTP => 132,
            Protocol::ICMP => 1,
            Protocol::ICMPv6 => 58,
            Protocol::VRRP => 112,
            Protocol::IGMP => 2,
        }
    }
    pub fn from_number(n: u8) -> Option<Protocol> {
        Some(match n {
            6 => Protocol::TCP,
            17 => Protocol::UDP,
            132 => Protocol::SCTP,
            1 => Protocol::ICMP,
            58 => Protocol::ICMPv6,
            112 => Protocol::VRRP,
            2 => Protocol::IGMP,
            _ => return None,
        })
    }
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s.to_ascii_uppercase().as_str() {
            "TCP" => Protocol::TCP,
            "UDP" => Protocol::UDP,
            "SCTP" => Protocol::SCTP,
            "ICMP" => Protocol::ICMP,
            "ICMPV6" => Protocol::ICMPv6,
            "VRRP" => Protocol::VRRP,
            "IGMP" => Protocol::IGMP,
            _ => return None,
        })
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::TCP => "TCP",
            Protocol::UDP => "UDP",
            Protocol::SCTP => "SCTP",
            Protocol::ICMP => "ICMP",
            Protocol::ICMPv6 => "ICMPv6",
            Protocol::VRRP => "VRRP",
            Protocol::IGMP => "IGMP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port as written: a number (0 = every port) or a named port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(untagged)]
pub enum PortSpec {
    Number(u16),
    Named(String),
}

/// One `ports[]` entry, normalized: `ANY` is expanded to TCP, UDP and SCTP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortProtocol {
    pub port: PortSpec,
    /// Inclusive end of a range; `None` for a single port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    pub protocols: Vec<Protocol>,
}

/// One `toPorts[]` entry.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortRule {
    /// `toPorts[1]`.
    pub section: String,
    pub ports: Vec<PortProtocol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener: Option<Listener>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminating_tls: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub originating_tls: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub envoy_config_kind: String,
    pub envoy_config_name: String,
    pub name: String,
    pub priority: u8,
}

/// L7 rules of one port rule: exactly one kind.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum L7Rules {
    Http(HttpRules),
    Kafka(Vec<KafkaRule>),
    Dns(Vec<DnsRule>),
    /// `l7proto` + `l7`: parsed, kept, enforced by no proxy yet.
    Generic {
        l7proto: String,
        l7: Vec<BTreeMap<String, String>>,
    },
}

impl L7Rules {
    pub fn kind(&self) -> L7Kind {
        match self {
            L7Rules::Http(_) => L7Kind::Http,
            L7Rules::Kafka(_) => L7Kind::Kafka,
            L7Rules::Dns(_) => L7Kind::Dns,
            L7Rules::Generic { .. } => L7Kind::Generic,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum L7Kind {
    Http,
    Kafka,
    Dns,
    Generic,
}

impl L7Kind {
    /// Precedence low byte of a redirect, as Cilium orders its parsers.
    pub fn redirect_precedence(&self) -> u8 {
        match self {
            L7Kind::Http => 101,
            L7Kind::Kafka => 106,
            L7Kind::Generic => 111,
            L7Kind::Dns => 121,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            L7Kind::Http => "http",
            L7Kind::Kafka => "kafka",
            L7Kind::Dns => "dns",
            L7Kind::Generic => "l7",
        }
    }
}

/// One `icmps[].fields[]` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct IcmpField {
    pub family: IcmpFamily,
    #[serde(rename = "type")]
    pub icmp_type: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum IcmpFamily {
    IPv4,
    IPv6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    Disabled,
    Required,
    TestAlwaysFail,
}

impl AuthMode {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disabled" => AuthMode::Disabled,
            "required" => AuthMode::Required,
            "test-always-fail" => AuthMode::TestAlwaysFail,
            _ => return None,
        })
    }
    /// Cilium's auth type number (0 none, 1 spire, 2 always-fail).
    pub fn auth_type(&self) -> u8 {
        match self {
            AuthMode::Disabled => 0,
            AuthMode::Required => 1,
            AuthMode::TestAlwaysFail => 2,
        }
    }
}

pub const ICMPV4_NAMES: &[(&str, u8)] = &[
    ("EchoReply", 0),
    ("DestinationUnreachable", 3),
    ("Redirect", 5),
    ("Echo", 8),
    ("EchoRequest", 8),
    ("RouterAdvertisement", 9),
    ("RouterSelection", 10),
    ("TimeExceeded", 11),
    ("ParameterProblem", 12),
    ("Timestamp", 13),
    ("TimestampReply", 14),
    ("Photuris", 40),
    ("ExtendedEchoRequest", 42),
    ("ExtendedEchoReply", 43),
];

pub const ICMPV6_NAMES: &[(&str, u8)] = &[
    ("DestinationUnreachable", 1),
    ("PacketTooBig", 2),
    ("TimeExceeded", 3),
    ("ParameterProblem", 4),
    ("EchoRequest", 128),
    ("EchoReply", 129),
    ("MulticastListenerQuery", 130),
    ("MulticastListenerReport", 131),
    ("MulticastListenerDone", 132),
    ("RouterSolicitation", 133),
    ("RouterAdvertisement", 134),
    ("NeighborSolicitation", 135),
    ("NeighborAdvertisement", 136),
    ("Redirect", 137),
    ("RouterRenumbering", 138),
    ("ICMPNodeInformationQuery", 139),
    ("ICMPNodeInformationResponse", 140),
    ("InverseNeighborDiscoverySolicitation", 141),
    ("InverseNeighborDiscoveryAdvertisement", 142),
    ("Version2MulticastListenerReport", 143),
    ("HomeAgentAddressDiscoveryRequest", 144),
    ("HomeAgentAddressDiscoveryReply", 145),
    ("MobilePrefixSolicitation", 146),
    ("MobilePrefixAdvertisement", 147),
    ("DuplicateAddressRequestCodeSuffix", 157),
    ("DuplicateAddressConfirmationCodeSuffix", 158),
    ("ExtendedEchoRequest", 160),
    ("ExtendedEchoReply", 161),
];
