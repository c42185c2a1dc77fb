//! Building flow records from policy verdicts (datapath events, proxy
//! requests, trace results), with attribution filled for every verdict,
//! default deny included.

use crate::flow::*;
use palisade_policy::api::{PolicyId, PolicyKind};
use palisade_policy::mapstate::RuleRef;
use std::net::IpAddr;

/// One side of a connection, as the agent knows it.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub identity: u32,
    /// `source:key=value` labels of the identity.
    pub labels: Vec<String>,
    /// Set when the peer is a pod.
    pub namespace: String,
    pub pod_name: String,
    pub endpoint_id: u32,
    pub names: Vec<String>,
}

/// What decided a verdict.
#[derive(Clone, Debug, Default)]
pub struct Attribution {
    /// The rules behind the deciding entry (allow, redirect or deny).
    pub rules: Vec<RuleRef>,
    /// For default deny: the policies that select the endpoint.
    pub default_deny_selected_by: Vec<PolicyId>,
    pub explanation: String,
}

/// A policy verdict event, independent of where it came from.
#[derive(Clone, Debug, Default)]
pub struct VerdictEvent {
    pub time_ns: u128,
    pub node_name: String,
    pub source: Peer,
    pub destination: Peer,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP).
    pub protocol: u8,
    /// For ICMP: the type (in `destination.port` otherwise).
    pub icmp_type: u8,
    pub tcp_flags: u8,
    /// True when the policy checked is the destination's ingress.
    pub ingress: bool,
    pub verdict: Verdict,
    /// 0, 133 (default deny) or 181 (deny rule).
    pub drop_reason: u32,
    pub match_type: u32,
    pub proxy_port: u16,
    pub is_reply: bool,
    pub attribution: Attribution,
}

fn policy_of(id: &PolicyId) -> Policy {
    let kind = id.kind.as_str().to_string();
    let mut labels = vec![
        format!("k8s:io.cilium.k8s.policy.derived-from={kind}"),
        format!("k8s:io.cilium.k8s.policy.name={}", id.name),
    ];
    if let Some(ns) = &id.namespace {
        labels.push(format!("k8s:io.cilium.k8s.policy.namespace={ns}"));
    }
    Policy {
        name: id.name.clone(),
        namespace: if id.kind == PolicyKind::CiliumClusterwideNetworkPolicy {
            String::new()
        } else {
            id.namespace.clone().unwrap_or_default()
        },
        labels,
        revision: String::new(),
        kind,
    }
}

fn cluster_of(p: &Peer) -> String {
    if p.pod_name.is_empty() {
        String::new()
    } else {
        palisade_policy::labels::DEFAULT_CLUSTER.into()
    }
}

fn endpoint_of(p: &Peer) -> Endpoint {
    Endpoint {
        id: p.endpoint_id,
        identity: p.identity,
        cluster_name: cluster_of(p),
        namespace: p.namespace.clone(),
        labels: p.labels.clone(),
        pod_name: p.pod_name.clone(),
        workloads: vec![],
    }
}

/// The endpoint of a peer and its DNS names, moved out of it.
fn endpoint_into(p: Peer) -> (Endpoint, Vec<String>) {
    let endpoint = Endpoint {
        id: p.endpoint_id,
        identity: p.identity,
        cluster_name: cluster_of(&p),
        namespace: p.namespace,
        labels: p.labels,
        pod_name: p.pod_name,
        workloads: vec![],
    };
    (endpoint, p.names)
}

/// The flow of a policy verdict, in Hubble's shape. [`VerdictEvent::into_flow`]
/// builds the same flow and moves the event's strings and labels into it
/// instead of copying them.
pub fn flow_from_verdict(e: &VerdictEvent) -> Flow {
    let mut f = flow_base(e);
    f.source = Some(endpoint_of(&e.source));
    f.destination = Some(endpoint_of(&e.destination));
    f.node_name = e.node_name.clone();
    f.source_names = e.source.names.clone();
    f.destination_names = e.destination.names.clone();
    attribute(&mut f, e.ingress, &e.attribution);
    f.summary = summary(&f);
    f
}

impl VerdictEvent {
    /// The flow of this verdict: [`flow_from_verdict`] without copying what
    /// the event already owns (labels, names, pod and node names).
    pub fn into_flow(self) -> Flow {
        let mut f = flow_base(&self);
        let (source, source_names) = endpoint_into(self.source);
        let (destination, destination_names) = endpoint_into(self.destination);
        f.source = Some(source);
        f.destination = Some(destination);
        f.node_name = self.node_name;
        f.source_names = source_names;
        f.destination_names = destination_names;
        attribute(&mut f, self.ingress, &self.attribution);
        f.summary = summary(&f);
        f
    }
}

/// Everything of the flow but the endpoints, names, attribution and summary.
fn flow_base(e: &VerdictEvent) -> Flow {
    let ports = |flags: bool| Ports {
        source_port: u32::from(e.source.port),
        destination_port: u32::from(e.destination.port),
        flags: flags.then_some(TcpFlags {
            fin: e.tcp_flags & 0x01 != 0,
            syn: e.tcp_flags & 0x02 != 0,
            rst: e.tcp_flags & 0x04 != 0,
            psh: e.tcp_flags & 0x08 != 0,
            ack: e.tcp_flags & 0x10 != 0,
        }),
    };
    let l4 = match e.protocol {
        6 => Layer4 {
            tcp: Some(ports(true)),
            ..Default::default()
        },
        17 => Layer4 {
            udp: Some(ports(false)),
            ..Default::default()
        },
        132 => Layer4 {
            sctp: Some(ports(false)),
            ..Default::default()
        },
        1 => Layer4 {
            icmpv4: Some(Icmp {
                icmp_type: u32::from(e.icmp_type),
                code: 0,
            }),
            ..Default::default()
        },
        58 => Layer4 {
            icmpv6: Some(Icmp {
                icmp_type: u32::from(e.icmp_type),
                code: 0,
            }),
            ..Default::default()
        },
        _ => Layer4::default(),
    };
    let ip_version = match e.source.ip.or(e.destination.ip) {
        Some(IpAddr::V6(_)) => "IPv6",
        _ => "IPv4",
    };
    Flow {
        time: rfc3339(e.time_ns),
        uuid: flow_uuid(e),
        verdict: e.verdict,
        drop_reason: e.drop_reason,
        drop_reason_desc: if e.verdict == Verdict::Dropped {
            drop_reason_desc(e.drop_reason).into()
        } else {
            String::new()
        },
        ip: Some(Ip {
            source: e.source.ip.map(|i| i.to_string()).unwrap_or_default(),
            destination: e.destination.ip.map(|i| i.to_string()).unwrap_or_default(),
            ip_version: ip_version.into(),
        }),
        l4: Some(l4),
        flow_type: FlowType::L3L4,
        event_type: Some(CiliumEventType {
            event_type: if e.verdict == Verdict::Dropped { 1 } else { 5 },
            sub_type: if e.verdict == Verdict::Dropped {
                e.drop_reason as i32
            } else {
                0
            },
        }),
        traffic_direction: if e.ingress {
            TrafficDirection::Ingress
        } else {
            TrafficDirection::Egress
        },
        policy_match_type: e.match_type,
        is_reply: Some(e.is_reply),
        proxy_port: u32::from(e.proxy_port),
        ..Default::default()
    }
}

/// Fills `*_allowed_by` / `*_denied_by` and Palisade's explanation.
pub fn attribute(f: &mut Flow, ingress: bool, a: &Attribution) {
    let mut policies: Vec<&PolicyId> = a.rules.iter().map(|r| &r.policy).collect();
    if policies.is_empty() {
        policies = a.default_deny_selected_by.iter().collect();
    }
    policies.sort();
    policies.dedup();
    let ps: Vec<Policy> = policies.into_iter().map(policy_of).collect();
    let denied = matches!(f.verdict, Verdict::Dropped | Verdict::Audit);
    match (ingress, denied) {
        (true, false) => f.ingress_allowed_by = ps,
        (false, false) => f.egress_allowed_by = ps,
        (true, true) => f.ingress_denied_by = ps,
        (false, true) => f.egress_denied_by = ps,
    }
    let mut rules: Vec<String> = a.rules.iter().map(|r| r.to_string()).collect();
    if rules.is_empty() && !a.default_deny_selected_by.is_empty() && denied {
        rules = a
            .default_deny_selected_by
            .iter()
            .map(|p| format!("{p} (default deny)"))
            .collect();
    }
    if !rules.is_empty() || !a.explanation.is_empty() {
        f.extensions = vec![PolicyExplanation {
            type_url: EXPLANATION_TYPE.into(),
            rules,
            explanation: a.explanation.clone(),
        }];
    }
}

/// FNV-1a (128-bit) over the bytes written to it.
struct Fnv128(u128);

impl std::fmt::Write for Fnv128 {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        for b in s.bytes() {
            self.0 ^= u128::from(b);
            self.0 = self.0.wrapping_mul(0x0000000001000000000000000000013B);
        }
        Ok(())
    }
}

fn flow_uuid(e: &VerdictEvent) -> String {
    use std::fmt::Write;
    // A stable id derived from the event (no randomness needed): the hash
    // of its text, hashed as it is formatted (no string built).
    let mut h = Fnv128(0x6c62272e07bb014262b821756295c58d);
    let _ = write!(
        h,
        "{}{:?}{:?}{}{}{}{}",
        e.time_ns,
        e.source.ip,
        e.destination.ip,
        e.source.port,
        e.destination.port,
        e.protocol,
        e.ingress
    );
    // 32 hex digits as 8-4-4-4-12, the version (4) and variant (8) digits
    // replacing the hash's 13th and 17th.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        let digit = match i {
            12 => b'4',
            16 => b'8',
            _ => HEX[((h.0 >> (4 * (31 - i))) & 0xf) as usize],
        };
        out.push(char::from(digit));
    }
    out
}

/// Appends `namespace/pod` (or the address) and `:port` unless it is 0.
fn push_side(s: &mut String, e: Option<&Endpoint>, ip: &str, port: u32) {
    use std::fmt::Write;
    match e {
        Some(e) if !e.pod_name.is_empty() => {
            s.push_str(&e.namespace);
            s.push('/');
            s.push_str(&e.pod_name);
        }
        _ => s.push_str(ip),
    }
    if port != 0 {
        let _ = write!(s, ":{port}");
    }
}

/// Hubble-compact style one-liner.
pub fn summary(f: &Flow) -> String {
    use std::fmt::Write;
    let (proto, sp, dp) = f.l4.as_ref().map_or(("", 0, 0), |l| l.summary());
    let (src_ip, dst_ip) =
        f.ip.as_ref()
            .map_or(("", ""), |ip| (ip.source.as_str(), ip.destination.as_str()));
    let icmp = proto.starts_with("ICMP");
    let dir = match f.traffic_direction {
        TrafficDirection::Ingress => "to-endpoint",
        TrafficDirection::Egress => "from-endpoint",
        _ => "",
    };
    let mut s = String::with_capacity(96);
    push_side(&mut s, f.source.as_ref(), src_ip, sp);
    s.push_str(" -> ");
    push_side(
        &mut s,
        f.destination.as_ref(),
        dst_ip,
        if icmp { 0 } else { dp },
    );
    s.push(' ');
    s.push_str(dir);
    s.push(' ');
    s.push_str(f.verdict.as_str());
    s.push(' ');
    if let Some(h) = f.l7.as_ref().and_then(|l| l.http.as_ref()) {
        let _ = write!(s, "http {} {} ", h.method, h.url);
        if h.code > 0 {
            let _ = write!(s, "{}", h.code);
        }
    } else if icmp {
        let _ = write!(s, "{proto} type {dp}");
    } else {
        s.push_str(proto);
    }
    if !f.drop_reason_desc.is_empty() {
        s.push_str(" (");
        s.push_str(&f.drop_reason_desc);
        s.push(')');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::api::PolicyKind;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn policy(kind: PolicyKind, namespace: Option<&str>, name: &str) -> PolicyId {
        PolicyId {
            kind,
            namespace: namespace.map(str::to_string),
            name: name.into(),
        }
    }

    /// The agent's egress-deny drop of a pod's connection.
    fn deny_event() -> VerdictEvent {
        VerdictEvent {
            time_ns: 1_764_252_000_123_456_789,
            node_name: "node-r".into(),
            source: Peer {
                ip: Some(IpAddr::V4(Ipv4Addr::new(10, 232, 0, 2))),
                port: 40_000,
                identity: 31_337,
                labels: vec![
                    "k8s:io.kubernetes.pod.namespace=default".into(),
                    "k8s:role=client".into(),
                ],
                namespace: "default".into(),
                pod_name: "client".into(),
                endpoint_id: 7,
                names: vec![],
            },
            destination: Peer {
                ip: Some(IpAddr::V4(Ipv4Addr::new(10, 232, 0, 3))),
                port: 9,
                identity: 4_242,
                labels: vec!["k8s:role=server".into()],
                namespace: "default".into(),
                pod_name: "server".into(),
                endpoint_id: 8,
                names: vec![],
            },
            protocol: 6,
            tcp_flags: 0x02,
            verdict: Verdict::Dropped,
            drop_reason: 181,
            match_type: 2,
            attribution: Attribution {
                rules: vec![RuleRef {
                    policy: policy(
                        PolicyKind::CiliumNetworkPolicy,
                        Some("default"),
                        "client-egress",
                    ),
                    section: "spec.egressDeny[0]".into(),
                }],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// The deny drop's flow as Hubble's JSON, whole: any change to what a
    /// flow says shows here.
    const DENY_FLOW_JSON: &str = r#"{"time":"2025-11-27T14:00:00.123456789Z","uuid":"61851c12-8493-47ce-8670-f02f999f320c","verdict":"DROPPED","drop_reason":181,"drop_reason_desc":"POLICY_DENY","IP":{"source":"10.232.0.2","destination":"10.232.0.3","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40000,"destination_port":9,"flags":{"SYN":true}}},"source":{"ID":7,"identity":31337,"cluster_name":"default","namespace":"default","labels":["k8s:io.kubernetes.pod.namespace=default","k8s:role=client"],"pod_name":"client"},"destination":{"ID":8,"identity":4242,"cluster_name":"default","namespace":"default","labels":["k8s:role=server"],"pod_name":"server"},"Type":"L3_L4","node_name":"node-r","event_type":{"type":1,"sub_type":181},"traffic_direction":"EGRESS","policy_match_type":2,"is_reply":false,"egress_denied_by":[{"name":"client-egress","namespace":"default","labels":["k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy","k8s:io.cilium.k8s.policy.name=client-egress","k8s:io.cilium.k8s.policy.namespace=default"],"kind":"CiliumNetworkPolicy"}],"extensions":{"@type":"type.googleapis.com/palisade.flow.v1.PolicyExplanation","rules":["CiliumNetworkPolicy default/client-egress spec.egressDeny[0]"]},"Summary":"default/client:40000 -> default/server:9 from-endpoint DROPPED TCP (POLICY_DENY)"}"#;

    #[test]
    fn the_flow_of_a_deny_drop_is_unchanged() {
        let f = flow_from_verdict(&deny_event());
        assert_eq!(serde_json::to_string(&f).expect("json"), DENY_FLOW_JSON);
        assert_eq!(deny_event().into_flow(), f);
    }

    #[test]
    fn summaries_name_l7_requests_and_icmp_types() {
        let mut f = flow_from_verdict(&deny_event());
        f.l7 = Some(Layer7 {
            http: Some(Http {
                code: 403,
                method: "GET".into(),
                url: "http://server/admin".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            summary(&f),
            "default/client:40000 -> default/server:9 from-endpoint DROPPED http GET http://server/admin 403 (POLICY_DENY)"
        );
        (f.ip, f.l4) = (None, None);
        assert_eq!(
            summary(&f),
            "default/client -> default/server from-endpoint DROPPED http GET http://server/admin 403 (POLICY_DENY)"
        );
        let mut ping = deny_event();
        (ping.protocol, ping.icmp_type) = (1, 8);
        assert_eq!(
            flow_from_verdict(&ping).summary,
            "default/client -> default/server from-endpoint DROPPED ICMPv4 type 8 (POLICY_DENY)"
        );
    }

    fn arb_ip() -> impl Strategy<Value = Option<IpAddr>> {
        prop_oneof![
            Just(None),
            any::<u32>().prop_map(|v| Some(IpAddr::V4(Ipv4Addr::from(v)))),
            any::<u128>().prop_map(|v| Some(IpAddr::V6(Ipv6Addr::from(v)))),
        ]
    }

    fn arb_text(choices: &'static [&'static str]) -> impl Strategy<Value = String> {
        proptest::sample::select(choices).prop_map(str::to_string)
    }

    fn arb_peer() -> impl Strategy<Value = Peer> {
        (
            arb_ip(),
            prop_oneof![Just(0u16), any::<u16>()],
            any::<u32>(),
            proptest::collection::vec(arb_text(&["k8s:a=b", "k8s:role=x", "reserved:world"]), 0..4),
            arb_text(&["", "default", "kube-system"]),
            arb_text(&["", "client", "server-0"]),
            any::<u32>(),
            proptest::collection::vec(arb_text(&["example.com", "api.example.org"]), 0..3),
        )
            .prop_map(
                |(ip, port, identity, labels, namespace, pod_name, endpoint_id, names)| Peer {
                    ip,
                    port,
                    identity,
                    labels,
                    namespace,
                    pod_name,
                    endpoint_id,
                    names,
                },
            )
    }

    fn arb_policy() -> impl Strategy<Value = PolicyId> {
        (
            proptest::sample::select(&[
                PolicyKind::CiliumNetworkPolicy,
                PolicyKind::CiliumClusterwideNetworkPolicy,
                PolicyKind::NetworkPolicy,
            ]),
            proptest::option::of(arb_text(&["default", "prod"])),
            arb_text(&["a", "b", "allow-web"]),
        )
            .prop_map(|(kind, namespace, name)| PolicyId {
                kind,
                namespace,
                name,
            })
    }

    fn arb_attribution() -> impl Strategy<Value = Attribution> {
        (
            proptest::collection::vec(
                (
                    arb_policy(),
                    arb_text(&["spec.ingress[0]", "spec.egressDeny[1]"]),
                )
                    .prop_map(|(policy, section)| RuleRef { policy, section }),
                0..4,
            ),
            proptest::collection::vec(arb_policy(), 0..4),
            arb_text(&["", "default deny: no rule allows this traffic"]),
        )
            .prop_map(
                |(rules, default_deny_selected_by, explanation)| Attribution {
                    rules,
                    default_deny_selected_by,
                    explanation,
                },
            )
    }

    const VERDICTS: [Verdict; 8] = [
        Verdict::VerdictUnknown,
        Verdict::Forwarded,
        Verdict::Dropped,
        Verdict::Error,
        Verdict::Audit,
        Verdict::Redirected,
        Verdict::Traced,
        Verdict::Translated,
    ];

    prop_compose! {
        fn arb_event()(
            time_ns in any::<u64>(),
            node_name in arb_text(&["", "node-a"]),
            source in arb_peer(),
            destination in arb_peer(),
            protocol in proptest::sample::select(&[6u8, 17, 132, 1, 58, 0, 47]),
            icmp_type in any::<u8>(),
            tcp_flags in any::<u8>(),
            ingress in any::<bool>(),
            verdict in proptest::sample::select(&VERDICTS),
            drop_reason in proptest::sample::select(&[0u32, 133, 181, 189, 7]),
            match_type in 0u32..8,
            proxy_port in any::<u16>(),
            is_reply in any::<bool>(),
            attribution in arb_attribution(),
        ) -> VerdictEvent {
            VerdictEvent {
                time_ns: u128::from(time_ns),
                node_name,
                source,
                destination,
                protocol,
                icmp_type,
                tcp_flags,
                ingress,
                verdict,
                drop_reason,
                match_type,
                proxy_port,
                is_reply,
                attribution,
            }
        }
    }

    proptest! {
        /// The agent's path (the event moved into its flow) and the
        /// borrowing builder give the same flow, whatever the event.
        #[test]
        fn moving_and_borrowing_builders_agree(e in arb_event()) {
            let want = flow_from_verdict(&e);
            prop_assert_eq!(&e.into_flow(), &want);
        }
    }
}
