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

fn endpoint_of(p: &Peer) -> Endpoint {
    Endpoint {
        id: p.endpoint_id,
        identity: p.identity,
        cluster_name: if p.pod_name.is_empty() {
            String::new()
        } else {
            palisade_policy::labels::DEFAULT_CLUSTER.into()
        },
        namespace: p.namespace.clone(),
        labels: p.labels.clone(),
        pod_name: p.pod_name.clone(),
        workloads: vec![],
    }
}

/// The flow of a policy verdict, in Hubble's shape.
pub fn flow_from_verdict(e: &VerdictEvent) -> Flow {
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
    let mut f = Flow {
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
        source: Some(endpoint_of(&e.source)),
        destination: Some(endpoint_of(&e.destination)),
        flow_type: FlowType::L3L4,
        node_name: e.node_name.clone(),
        source_names: e.source.names.clone(),
        destination_names: e.destination.names.clone(),
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
    };
    attribute(&mut f, e.ingress, &e.attribution);
    f.summary = summary(&f);
    f
}

/// Fills `*_allowed_by` / `*_denied_by` and Palisade's explanation.
pub fn attribute(f: &mut Flow, ingress: bool, a: &Attribution) {
    let mut policies: Vec<PolicyId> = a.rules.iter().map(|r| r.policy.clone()).collect();
    if policies.is_empty() {
        policies = a.default_deny_selected_by.clone();
    }
    policies.sort();
    policies.dedup();
    let ps: Vec<Policy> = policies.iter().map(policy_of).collect();
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

fn flow_uuid(e: &VerdictEvent) -> String {
    // A stable id derived from the event (no randomness needed).
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    let text = format!(
        "{}{:?}{:?}{}{}{}{}",
        e.time_ns,
        e.source.ip,
        e.destination.ip,
        e.source.port,
        e.destination.port,
        e.protocol,
        e.ingress
    );
    for b in text.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    let s = format!("{h:032x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &s[0..8],
        &s[8..12],
        &s[13..16],
        &s[17..20],
        &s[20..32]
    )
}

fn side_text(e: Option<&Endpoint>, ip: &str, port: u32) -> String {
    let name = match e {
        Some(e) if !e.pod_name.is_empty() => format!("{}/{}", e.namespace, e.pod_name),
        _ => ip.to_string(),
    };
    if port == 0 {
        name
    } else {
        format!("{name}:{port}")
    }
}

/// Hubble-compact style one-liner.
pub fn summary(f: &Flow) -> String {
    let (proto, sp, dp) = f.l4.as_ref().map_or(("", 0, 0), |l| l.summary());
    let ip = f.ip.clone().unwrap_or_default();
    let src = side_text(f.source.as_ref(), &ip.source, sp);
    let dst = side_text(
        f.destination.as_ref(),
        &ip.destination,
        if proto.starts_with("ICMP") { 0 } else { dp },
    );
    let dir = match f.traffic_direction {
        TrafficDirection::Ingress => "to-endpoint",
        TrafficDirection::Egress => "from-endpoint",
        _ => "",
    };
    let what = if let Some(h) = f.l7.as_ref().and_then(|l| l.http.as_ref()) {
        format!(
            "http {} {} {}",
            h.method,
            h.url,
            if h.code > 0 {
                h.code.to_string()
            } else {
                String::new()
            }
        )
    } else if proto.starts_with("ICMP") {
        format!("{proto} type {dp}")
    } else {
        proto.to_string()
    };
    let mut s = format!("{src} -> {dst} {dir} {} {what}", f.verdict.as_str());
    if !f.drop_reason_desc.is_empty() {
        s.push_str(&format!(" ({})", f.drop_reason_desc));
    }
    s
}
