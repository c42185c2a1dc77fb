//! Explaining verdicts: a connection between two peers, evaluated in every
//! direction that applies with the same `PolicyMap::lookup` the datapath
//! uses, and the L7 matchers the proxies use, with the rules that decided.

use crate::api::{Direction, L7Kind, L7Rules, Protocol};
use crate::engine::Engine;
use crate::identity::{self, NumericIdentity};
use crate::l7::L7Request;
use crate::mapstate::{Decision, L7Part, PolicyMap, RuleRef, Verdict};
use serde::Serialize;
use std::net::IpAddr;

/// One side of a connection, as users write it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PeerSpec {
    /// `NAMESPACE/POD`.
    Pod(String),
    /// `ip:ADDRESS`, with an optional DNS name it was resolved from.
    Ip {
        ip: IpAddr,
        dns_name: Option<String>,
    },
    /// `node:NAME`.
    Node(String),
    /// `entity:NAME`.
    Entity(String),
}

impl PeerSpec {
    /// Parses `ns/pod`, `ip:1.2.3.4`, `node:name` or `entity:name`.
    pub fn parse(s: &str) -> Result<PeerSpec, String> {
        if let Some(ip) = s.strip_prefix("ip:") {
            return ip
                .parse()
                .map(|ip| PeerSpec::Ip { ip, dns_name: None })
                .map_err(|_| format!("\"{ip}\" is not an IP address (ip:ADDRESS)"));
        }
        if let Some(n) = s.strip_prefix("node:") {
            return Ok(PeerSpec::Node(n.to_string()));
        }
        if let Some(e) = s.strip_prefix("entity:") {
            return Ok(PeerSpec::Entity(e.to_string()));
        }
        match s.split_once('/') {
            Some((ns, pod)) if !ns.is_empty() && !pod.is_empty() && !pod.contains('/') => {
                Ok(PeerSpec::Pod(s.to_string()))
            }
            _ => Err(format!(
                "invalid peer \"{s}\": use NAMESPACE/POD, ip:ADDRESS, node:NAME or entity:NAME"
            )),
        }
    }
}

impl std::fmt::Display for PeerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerSpec::Pod(p) => f.write_str(p),
            PeerSpec::Ip { ip, dns_name: None } => write!(f, "ip:{ip}"),
            PeerSpec::Ip {
                ip,
                dns_name: Some(n),
            } => write!(f, "ip:{ip} ({n})"),
            PeerSpec::Node(n) => write!(f, "node:{n}"),
            PeerSpec::Entity(e) => write!(f, "entity:{e}"),
        }
    }
}

/// A connection to explain.
#[derive(Clone, Debug, Serialize)]
pub struct Query {
    pub from: PeerSpec,
    pub to: PeerSpec,
    pub protocol: Protocol,
    /// Destination port; the ICMP type for ICMP.
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l7: Option<L7Request>,
}

/// The verdict of one direction.
#[derive(Clone, Debug, Serialize)]
pub struct DirectionVerdict {
    pub direction: Direction,
    /// The endpoint whose policy was evaluated.
    pub endpoint: String,
    pub remote_identity: NumericIdentity,
    pub remote_labels: String,
    pub allowed: bool,
    /// `allow`, `deny`, `redirect` or `default-deny`.
    pub verdict: String,
    /// The key that decided (`ANY`, `80/TCP`) and whether it was exact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub drop_reason: u8,
    /// The rules that decided.
    pub rules: Vec<RuleRef>,
    /// A sentence that says why.
    pub explanation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l7: Option<L7Verdict>,
}

#[derive(Clone, Debug, Serialize)]
pub struct L7Verdict {
    pub allowed: bool,
    pub rules: Vec<RuleRef>,
    pub explanation: String,
}

/// The whole answer.
#[derive(Clone, Debug, Serialize)]
pub struct TraceResult {
    pub query: Query,
    pub allowed: bool,
    pub directions: Vec<DirectionVerdict>,
}

struct Side {
    /// The endpoint (pod key) when this side is a managed pod.
    endpoint: Option<String>,
    identity: NumericIdentity,
    node: Option<String>,
}

fn resolve_side(
    engine: &Engine,
    peer: &PeerSpec,
    other_node: Option<&str>,
) -> Result<Side, String> {
    match peer {
        PeerSpec::Pod(key) => {
            let pod = engine.state().pod(key).ok_or_else(|| {
                format!("pod {key} is not in the cluster state (add its Pod manifest)")
            })?;
            let identity = if pod.host_network {
                identity::HOST
            } else {
                engine
                    .endpoint_identity(key)
                    .ok_or_else(|| format!("pod {key} has no identity"))?
            };
            Ok(Side {
                endpoint: engine.endpoint_map(key).map(|_| key.clone()),
                identity,
                node: pod.node_name.clone(),
            })
        }
        PeerSpec::Ip { ip, .. } => {
            if let Some(pod) = engine.state().pod_by_ip(*ip) {
                return resolve_side(engine, &PeerSpec::Pod(pod.key()), other_node);
            }
            if let Some(n) = engine.state().node_by_ip(*ip) {
                return resolve_side(engine, &PeerSpec::Node(n.name.clone()), other_node);
            }
            Ok(Side {
                endpoint: None,
                identity: engine.identity_of_ip(*ip, other_node),
                node: None,
            })
        }
        PeerSpec::Node(name) => {
            if !engine.state().nodes.contains_key(name) {
                return Err(format!(
                    "node {name} is not in the cluster state (add its Node manifest)"
                ));
            }
            let identity = if Some(name.as_str()) == other_node {
                identity::HOST
            } else {
                identity::REMOTE_NODE
            };
            Ok(Side {
                endpoint: None,
                identity,
                node: Some(name.clone()),
            })
        }
        PeerSpec::Entity(e) => {
            let id = identity::reserved_by_name(e).ok_or_else(|| {
                let names: Vec<&str> = identity::RESERVED.iter().map(|(_, n)| *n).collect();
                format!("unknown entity \"{e}\"; valid: {}", names.join(", "))
            })?;
            Ok(Side {
                endpoint: None,
                identity: id,
                node: None,
            })
        }
    }
}

fn pod_node(engine: &Engine, peer: &PeerSpec) -> Option<String> {
    match peer {
        PeerSpec::Pod(k) => engine.state().pod(k).and_then(|p| p.node_name.clone()),
        PeerSpec::Ip { ip, .. } => engine
            .state()
            .pod_by_ip(*ip)
            .and_then(|p| p.node_name.clone()),
        _ => None,
    }
}

/// Evaluates a query. The engine must already know any DNS name the query
/// relies on (`Engine::learn_fqdn`).
pub fn trace(engine: &Engine, q: &Query) -> Result<TraceResult, String> {
    let from_node = pod_node(engine, &q.from);
    let to_node = pod_node(engine, &q.to);
    let src = resolve_side(engine, &q.from, to_node.as_deref())?;
    let dst = resolve_side(engine, &q.to, from_node.as_deref())?;
    let _ = (&src.node, &dst.node);
    let mut directions = Vec::new();
    if let Some(ep) = &src.endpoint
        && let Some(map) = engine.endpoint_map(ep)
    {
        directions.push(evaluate(
            engine,
            map,
            ep,
            Direction::Egress,
            dst.identity,
            q,
        ));
    }
    if let Some(ep) = &dst.endpoint
        && let Some(map) = engine.endpoint_map(ep)
    {
        directions.push(evaluate(
            engine,
            map,
            ep,
            Direction::Ingress,
            src.identity,
            q,
        ));
    }
    if directions.is_empty() {
        return Err(format!(
            "neither {} nor {} is a Palisade endpoint (a pod in the cluster state); no policy applies",
            q.from, q.to
        ));
    }
    let allowed = directions.iter().all(|d| d.allowed);
    Ok(TraceResult {
        query: q.clone(),
        allowed,
        directions,
    })
}

fn labels_text(engine: &Engine, id: NumericIdentity) -> String {
    engine
        .identities()
        .get(id)
        .map(|i| i.labels.to_string())
        .unwrap_or_else(|| format!("identity {id}"))
}

fn port_text(q: &Query) -> String {
    match q.protocol {
        Protocol::ICMP | Protocol::ICMPv6 => format!("{} type {}", q.protocol, q.port),
        p => format!("{}/{p}", q.port),
    }
}

fn evaluate(
    engine: &Engine,
    map: &PolicyMap,
    endpoint: &str,
    dir: Direction,
    remote: NumericIdentity,
    q: &Query,
) -> DirectionVerdict {
    let proto = q.protocol.number();
    let d: Decision = map.lookup(remote, dir, proto, q.port);
    let peer = match dir {
        Direction::Egress => q.to.to_string(),
        Direction::Ingress => q.from.to_string(),
    };
    let remote_labels = labels_text(engine, remote);
    let enforcement = map.enforcement(dir);
    let mut out = DirectionVerdict {
        direction: dir,
        endpoint: endpoint.to_string(),
        remote_identity: remote,
        remote_labels,
        allowed: d.allowed,
        verdict: String::new(),
        key: d.key.map(|k| {
            let id = if k.identity == 0 {
                "ANY".to_string()
            } else {
                k.identity.to_string()
            };
            format!("identity {id} {}", k.port_text())
        }),
        drop_reason: d.drop_reason,
        rules: vec![],
        explanation: String::new(),
        l7: None,
    };
    let policies = || {
        enforcement
            .selected_by
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (d.verdict, &d.entry) {
        (None, _) => {
            out.verdict = "default-deny".into();
            out.explanation = format!(
                "default deny: selected by {}; no rule allows {peer} (identity {remote}) on {}",
                policies(),
                port_text(q)
            );
        }
        (Some(Verdict::Deny), Some(e)) => {
            out.verdict = "deny".into();
            out.rules = e.derived_from.iter().cloned().collect();
            out.explanation = format!(
                "denied by {}",
                out.rules
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        (Some(v), Some(e)) => {
            out.verdict = v.as_str().into();
            out.rules = e.derived_from.iter().cloned().collect();
            out.explanation = if out.rules.is_empty() {
                if enforcement.selected_by.is_empty() {
                    format!(
                        "allowed: no policy selects {endpoint} for {dir}, so its {dir} is open (default allow)"
                    )
                } else {
                    format!(
                        "allowed: {} select {endpoint} for {dir} but none enables default deny (enableDefaultDeny: false)",
                        policies()
                    )
                }
            } else {
                format!(
                    "allowed by {}",
                    out.rules
                        .iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            };
            if let Verdict::Redirect(kind) = v {
                out.explanation
                    .push_str(&format!(" (redirected to the {} proxy)", kind.as_str()));
                if let Some(req) = &q.l7
                    && let Some(l7) = l7_verdict(map, remote, dir, proto, q.port, kind, req)
                {
                    out.allowed = l7.allowed;
                    out.l7 = Some(l7);
                }
            }
        }
        (Some(_), None) => {}
    }
    out
}

fn request_kind(req: &L7Request) -> L7Kind {
    match req {
        L7Request::Http(_) => L7Kind::Http,
        L7Request::Kafka(_) => L7Kind::Kafka,
        L7Request::Dns { .. } => L7Kind::Dns,
    }
}

/// The L7 decision for a request on a redirected connection: allowed when
/// any allow contribution covering the connection admits it. This is the
/// function the proxies call.
pub fn l7_verdict(
    map: &PolicyMap,
    remote: NumericIdentity,
    dir: Direction,
    proto: u8,
    port: u16,
    kind: L7Kind,
    req: &L7Request,
) -> Option<L7Verdict> {
    if request_kind(req) != kind {
        return None;
    }
    let contributions = map.l7_contributions(remote, dir, proto, port);
    let mut allowed_by: Vec<&RuleRef> = Vec::new();
    let mut considered: Vec<&RuleRef> = Vec::new();
    for c in &contributions {
        let ok = match &c.l7 {
            L7Part::AllowAll => true,
            L7Part::Rules(rules) => l7_rules_match(rules, req),
        };
        considered.push(&c.rule);
        if ok {
            allowed_by.push(&c.rule);
        }
    }
    // Only the list the verdict names is cloned.
    let named = |mut refs: Vec<&RuleRef>| -> Vec<RuleRef> {
        refs.sort();
        refs.dedup();
        refs.into_iter().cloned().collect()
    };
    let what = match req {
        L7Request::Http(h) => format!("{} {}", h.method, h.path),
        L7Request::Kafka(k) => format!(
            "kafka {} v{} client {:?} topics {:?}",
            crate::l7::kafka_api_key_name(k.api_key).unwrap_or("?"),
            k.api_version,
            k.client_id,
            k.topics
        ),
        L7Request::Dns { query } => format!("DNS query {query}"),
    };
    Some(if allowed_by.is_empty() {
        let considered = named(considered);
        L7Verdict {
            allowed: false,
            explanation: format!(
                "{what} matches no {} rule of {}",
                kind.as_str(),
                considered
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            rules: considered,
        }
    } else {
        let allowed_by = named(allowed_by);
        L7Verdict {
            allowed: true,
            explanation: format!(
                "{what} allowed by {}",
                allowed_by
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            rules: allowed_by,
        }
    })
}

/// Whether any rule of a list admits the request. HTTP lists are matched
/// with their compiled index (`HttpRules::any_match`, equal to a scan of
/// `HttpRule::matches` over the list).
pub fn l7_rules_match(rules: &L7Rules, req: &L7Request) -> bool {
    match (rules, req) {
        (L7Rules::Http(rs), L7Request::Http(h)) => rs.is_empty() || rs.any_match(h),
        (L7Rules::Kafka(rs), L7Request::Kafka(k)) => {
            rs.is_empty() || rs.iter().any(|r| r.matches(k))
        }
        (L7Rules::Dns(rs), L7Request::Dns { query }) => {
            rs.is_empty() || rs.iter().any(|r| r.matches(query))
        }
        _ => false,
    }
}

impl std::fmt::Display for TraceResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = &self.query;
        writeln!(f, "{} -> {} {}", q.from, q.to, port_text(q))?;
        for d in &self.directions {
            let arrow = match d.direction {
                Direction::Egress => "egress ",
                Direction::Ingress => "ingress",
            };
            writeln!(
                f,
                "  {arrow} of {:<24} {}",
                d.endpoint,
                if d.allowed { "ALLOWED" } else { "DENIED" }
            )?;
            writeln!(
                f,
                "    remote: identity {} ({})",
                d.remote_identity, d.remote_labels
            )?;
            if let Some(k) = &d.key {
                writeln!(f, "    entry:  {k} -> {}", d.verdict)?;
            }
            writeln!(f, "    why:    {}", d.explanation)?;
            if let Some(l7) = &d.l7 {
                writeln!(
                    f,
                    "    L7:     {} - {}",
                    if l7.allowed { "ALLOWED" } else { "DENIED" },
                    l7.explanation
                )?;
            }
        }
        write!(
            f,
            "Verdict: {}",
            if self.allowed { "ALLOWED" } else { "DENIED" }
        )
    }
}
