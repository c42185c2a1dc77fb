//! Flow filters with Hubble's semantics: the criteria of one filter are
//! ANDed, the values of one criterion ORed; a flow passes when it matches
//! any allow filter (or there is none) and no deny filter (`--not`).

use crate::flow::{Endpoint, Flow, FlowType, TrafficDirection, Verdict};
use palisade_policy::api::Cidr;
use palisade_policy::labels::{LabelKey, LabelSet, SOURCE_ANY};
use palisade_policy::selector::{Requirement, Selector};
use regex::Regex;
use std::net::IpAddr;

/// Which side of the flow a criterion looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
    Either,
}

/// One criterion.
#[derive(Clone, Debug)]
pub enum Criterion {
    Ip(Side, Vec<Cidr>),
    /// `[namespace/]pod-name-prefix`.
    Pod(Side, Vec<(Option<String>, String)>),
    Namespace(Side, Vec<String>),
    Label(Side, Vec<Selector>),
    Identity(Side, Vec<u32>),
    /// DNS names (`*` wildcards) of the peer.
    Fqdn(Side, Vec<Regex>),
    Port(Side, Vec<u32>),
    Verdict(Vec<Verdict>),
    /// `drop`, `trace`, `l7`, `policy-verdict`.
    Type(Vec<String>),
    /// `tcp`, `udp`, `icmp`, `sctp`, `http`, `dns`, `kafka`.
    Protocol(Vec<String>),
    /// Exact codes or prefixes such as `5+`.
    HttpStatus(Vec<String>),
    HttpMethod(Vec<String>),
    HttpPath(Vec<Regex>),
    Direction(Vec<TrafficDirection>),
    /// Any of these (the values of one flag given several times).
    Any(Vec<Criterion>),
}

/// A conjunction of criteria.
#[derive(Clone, Debug, Default)]
pub struct FlowFilter {
    pub criteria: Vec<Criterion>,
}

/// Allow and deny filters together.
#[derive(Clone, Debug, Default)]
pub struct FilterSet {
    pub allow: Vec<FlowFilter>,
    pub deny: Vec<FlowFilter>,
}

impl FilterSet {
    pub fn matches(&self, f: &Flow) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|x| x.matches(f)))
            && !self.deny.iter().any(|x| x.matches(f))
    }
}

impl FlowFilter {
    pub fn matches(&self, f: &Flow) -> bool {
        self.criteria.iter().all(|c| c.matches(f))
    }
}

/// One side of a flow: endpoint, IP, port, DNS names.
type SideView<'a> = (Option<&'a Endpoint>, Option<&'a str>, u32, &'a [String]);

fn sides(f: &Flow, side: Side) -> Vec<SideView<'_>> {
    let ip = f.ip.as_ref();
    let (sp, dp) =
        f.l4.as_ref()
            .map(|l| {
                let (_, s, d) = l.summary();
                (s, d)
            })
            .unwrap_or((0, 0));
    let src = (
        f.source.as_ref(),
        ip.map(|i| i.source.as_str()),
        sp,
        f.source_names.as_slice(),
    );
    let dst = (
        f.destination.as_ref(),
        ip.map(|i| i.destination.as_str()),
        dp,
        f.destination_names.as_slice(),
    );
    match side {
        Side::Source => vec![src],
        Side::Destination => vec![dst],
        Side::Either => vec![src, dst],
    }
}

fn endpoint_labels(e: &Endpoint) -> LabelSet {
    LabelSet::new(
        e.labels
            .iter()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                let key = LabelKey::parse(k, "k8s");
                palisade_policy::labels::Label::new(&key.source, &key.key, v)
            })
            .collect(),
    )
}

impl Criterion {
    pub fn matches(&self, f: &Flow) -> bool {
        match self {
            Criterion::Ip(side, cidrs) => sides(f, *side).iter().any(|(_, ip, _, _)| {
                ip.and_then(|s| s.parse::<IpAddr>().ok())
                    .is_some_and(|ip| cidrs.iter().any(|c| c.contains_addr(ip)))
            }),
            Criterion::Pod(side, pods) => sides(f, *side).iter().any(|(e, _, _, _)| {
                e.is_some_and(|e| {
                    !e.pod_name.is_empty()
                        && pods.iter().any(|(ns, prefix)| {
                            ns.as_deref().is_none_or(|n| n == e.namespace)
                                && e.pod_name.starts_with(prefix.as_str())
                        })
                })
            }),
            Criterion::Namespace(side, nss) => sides(f, *side)
                .iter()
                .any(|(e, _, _, _)| e.is_some_and(|e| nss.contains(&e.namespace))),
            Criterion::Label(side, sels) => sides(f, *side).iter().any(|(e, _, _, _)| {
                e.is_some_and(|e| {
                    let l = endpoint_labels(e);
                    sels.iter().any(|s| s.matches(&l))
                })
            }),
            Criterion::Identity(side, ids) => sides(f, *side)
                .iter()
                .any(|(e, _, _, _)| e.is_some_and(|e| ids.contains(&e.identity))),
            Criterion::Fqdn(side, res) => sides(f, *side).iter().any(|(_, _, _, names)| {
                names.iter().any(|n| {
                    let n = n.trim_end_matches('.');
                    res.iter().any(|r| r.is_match(n))
                })
            }),
            Criterion::Port(side, ports) => {
                sides(f, *side).iter().any(|(_, _, p, _)| ports.contains(p))
            }
            Criterion::Verdict(vs) => vs.contains(&f.verdict),
            Criterion::Type(types) => types.iter().any(|t| {
                let et = f.event_type.as_ref().map_or(0, |e| e.event_type);
                match t.as_str() {
                    "drop" => et == 1,
                    "trace" => et == 4,
                    "policy-verdict" => et == 5,
                    "l7" => et == 129 || f.flow_type == FlowType::L7,
                    _ => false,
                }
            }),
            Criterion::Protocol(ps) => ps.iter().any(|p| {
                let l4 = f.l4.as_ref();
                let l7 = f.l7.as_ref();
                match p.as_str() {
                    "tcp" => l4.is_some_and(|l| l.tcp.is_some()),
                    "udp" => l4.is_some_and(|l| l.udp.is_some()),
                    "sctp" => l4.is_some_and(|l| l.sctp.is_some()),
                    "icmp" => l4.is_some_and(|l| l.icmpv4.is_some() || l.icmpv6.is_some()),
                    "icmpv4" => l4.is_some_and(|l| l.icmpv4.is_some()),
                    "icmpv6" => l4.is_some_and(|l| l.icmpv6.is_some()),
                    "http" => l7.is_some_and(|l| l.http.is_some()),
                    "dns" => l7.is_some_and(|l| l.dns.is_some()),
                    "kafka" => l7.is_some_and(|l| l.kafka.is_some()),
                    _ => false,
                }
            }),
            Criterion::HttpStatus(codes) => {
                f.l7.as_ref()
                    .and_then(|l| l.http.as_ref())
                    .is_some_and(|h| {
                        let code = h.code.to_string();
                        codes.iter().any(|c| match c.strip_suffix('+') {
                            Some(prefix) => code.starts_with(prefix),
                            None => *c == code,
                        })
                    })
            }
            Criterion::HttpMethod(ms) => {
                f.l7.as_ref()
                    .and_then(|l| l.http.as_ref())
                    .is_some_and(|h| ms.iter().any(|m| m.eq_ignore_ascii_case(&h.method)))
            }
            Criterion::HttpPath(res) => {
                f.l7.as_ref()
                    .and_then(|l| l.http.as_ref())
                    .is_some_and(|h| {
                        let path = h
                            .url
                            .split_once("://")
                            .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
                            .unwrap_or(&h.url);
                        res.iter().any(|r| r.is_match(path))
                    })
            }
            Criterion::Direction(ds) => ds.contains(&f.traffic_direction),
            Criterion::Any(cs) => cs.iter().any(|c| c.matches(f)),
        }
    }
}

/// Parses a label filter: `key=value`, `key`, `!key`, comma-separated
/// (AND), keys with or without a source (`k8s:app=web`, `reserved:world`).
pub fn parse_label_selector(s: &str) -> Result<Selector, String> {
    let mut reqs = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(k) = part.strip_prefix('!') {
            reqs.push(Requirement {
                key: LabelKey::parse(k, SOURCE_ANY),
                op: palisade_policy::selector::Operator::DoesNotExist,
                values: Default::default(),
            });
        } else if let Some((k, v)) = part.split_once("!=") {
            reqs.push(Requirement {
                key: LabelKey::parse(k, SOURCE_ANY),
                op: palisade_policy::selector::Operator::NotIn,
                values: [v.to_string()].into(),
            });
        } else if let Some((k, v)) = part.split_once('=') {
            reqs.push(Requirement::equals(
                LabelKey::parse(k.trim_end_matches('='), SOURCE_ANY),
                v,
            ));
        } else {
            reqs.push(Requirement::exists(LabelKey::parse(part, SOURCE_ANY)));
        }
    }
    if reqs.is_empty() {
        return Err(format!("empty label selector \"{s}\""));
    }
    Ok(Selector::new(reqs))
}

/// `*.cilium.io` style name pattern (also used for `--fqdn`).
pub fn fqdn_regex(pattern: &str) -> Result<Regex, String> {
    let p = pattern.trim_end_matches('.').to_ascii_lowercase();
    let re = format!(
        "(?i)^{}$",
        regex::escape(&p).replace(r"\*", "[-a-zA-Z0-9_.]*")
    );
    Regex::new(&re).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::*;

    fn flow() -> Flow {
        Flow {
            verdict: Verdict::Dropped,
            ip: Some(Ip {
                source: "10.0.1.10".into(),
                destination: "10.0.2.20".into(),
                ip_version: "IPv4".into(),
            }),
            l4: Some(Layer4 {
                tcp: Some(Ports {
                    source_port: 40000,
                    destination_port: 80,
                    flags: None,
                }),
                ..Default::default()
            }),
            source: Some(Endpoint {
                namespace: "default".into(),
                pod_name: "frontend-abc".into(),
                labels: vec!["k8s:app=frontend".into()],
                identity: 300,
                ..Default::default()
            }),
            destination: Some(Endpoint {
                namespace: "default".into(),
                pod_name: "backend".into(),
                labels: vec!["k8s:app=backend".into()],
                identity: 400,
                ..Default::default()
            }),
            traffic_direction: TrafficDirection::Ingress,
            ..Default::default()
        }
    }

    #[test]
    fn hubble_semantics() {
        let f = flow();
        let pod = |side, p: &str| FlowFilter {
            criteria: vec![Criterion::Pod(
                side,
                vec![(Some("default".into()), p.into())],
            )],
        };
        assert!(pod(Side::Source, "frontend").matches(&f));
        assert!(!pod(Side::Destination, "frontend").matches(&f));
        assert!(pod(Side::Either, "backend").matches(&f));
        let set = FilterSet {
            allow: vec![FlowFilter {
                criteria: vec![
                    Criterion::Verdict(vec![Verdict::Dropped]),
                    Criterion::Port(Side::Destination, vec![80]),
                    Criterion::Label(
                        Side::Destination,
                        vec![parse_label_selector("app=backend").expect("sel")],
                    ),
                ],
            }],
            deny: vec![FlowFilter {
                criteria: vec![Criterion::Ip(
                    Side::Source,
                    vec![Cidr::parse("10.0.9.0/24").expect("cidr")],
                )],
            }],
        };
        assert!(set.matches(&f));
        let set2 = FilterSet {
            allow: vec![],
            deny: vec![FlowFilter {
                criteria: vec![Criterion::Ip(
                    Side::Source,
                    vec![Cidr::parse("10.0.1.0/24").expect("cidr")],
                )],
            }],
        };
        assert!(!set2.matches(&f));
    }
}
