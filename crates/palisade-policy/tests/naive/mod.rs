//! A deliberately naive reference evaluator for Palisade's policy engine.
//!
//! It answers "is this connection allowed?" by scanning every rule of every
//! policy for every query, straight from the rules of the Cilium policy
//! model (`shared/reference/cilium-policy-model.md` §2.1, §2.5-2.9, §2.13).
//! It shares no code with the resolver: it reads the decoded policy types
//! (`palisade_policy::api`) and the cluster state, and does its own label
//! derivation, selector matching, namespace scoping, entity and CIDR
//! matching, port coverage and named-port lookup. No identities, no policy
//! map, no selector cache, no precedence arithmetic beyond "deny beats
//! redirect beats allow".
//!
//! The ideal verdict of one direction (the endpoint's ingress or egress):
//! among every rule element that selects the remote peer and whose ports
//! cover the connection, the strongest class wins (deny > redirect to a
//! proxy > allow); when nothing covers it, the connection is denied if some
//! rule that selects the endpoint has entries in that direction without
//! `enableDefaultDeny: false`, and allowed otherwise.
//!
//! Not modelled (the property tests do not generate them): toServices,
//! toFQDNs, fromNodes/toNodes, toGroups, host policies (nodeSelector),
//! host-network pods, IPv6 peers, Kafka and DNS L7 rules.

#![allow(dead_code)]

use palisade_policy::api::{
    Cidr, CidrRule, CidrSource, Direction, Entity, L7Rules, PeerRule, Peers, Policy, PolicyKind,
    PortSpec, Protocol, Rule, Subject,
};
use palisade_policy::cluster::{ClusterState, Pod};
use palisade_policy::l7::HttpRequest;
use palisade_policy::selector::{Operator, Requirement, Selector};
use std::net::IpAddr;

/// One label: (source, key, value).
type Label = (String, String, String);

const NS_KEY: &str = "io.kubernetes.pod.namespace";
const CLUSTER_KEY: &str = "io.cilium.k8s.policy.cluster";
const SA_KEY: &str = "io.cilium.k8s.policy.serviceaccount";
const NS_LABELS: &str = "io.cilium.k8s.namespace.labels.";
const CLUSTER_NAME: &str = "default";

/// A peer of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NPeer {
    /// `namespace/name` of a pod in the cluster state.
    Pod(String),
    /// A reserved entity by its identity name (`host`, `world`, ...).
    Entity(String),
    /// An address outside the cluster.
    Ip(IpAddr),
}

/// The strongest class of the rule elements covering a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Allow,
    Redirect,
    Deny,
}

/// The verdict of one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirOutcome {
    pub direction: Direction,
    /// Default deny applies to this direction.
    pub enforced: bool,
    /// The strongest covering class, if any element covers the connection.
    pub class: Option<Class>,
    /// The L3/L4 verdict, and the L7 one when an HTTP request was given
    /// and the connection goes to the proxy.
    pub allowed: bool,
    pub l7_allowed: Option<bool>,
}

impl DirOutcome {
    /// The name `trace` gives the deciding entry.
    pub fn verdict_name(&self) -> &'static str {
        match self.class {
            Some(Class::Deny) => "deny",
            Some(Class::Redirect) => "redirect",
            Some(Class::Allow) => "allow",
            None if self.enforced => "default-deny",
            None => "allow",
        }
    }
}

/// The verdict of a connection: the source's egress and the destination's
/// ingress, for each side that is a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    pub egress: Option<DirOutcome>,
    pub ingress: Option<DirOutcome>,
}

/// What a remote peer is, for matching.
enum Remote<'a> {
    Pod { labels: Vec<Label>, pod: &'a Pod },
    Reserved(String),
    External(IpAddr),
}

impl Remote<'_> {
    fn labels(&self) -> Vec<Label> {
        match self {
            Remote::Pod { labels, .. } => labels.clone(),
            Remote::Reserved(n) => vec![("reserved".into(), n.clone(), String::new())],
            Remote::External(_) => vec![("reserved".into(), "world".into(), String::new())],
        }
    }
}

/// The evaluator: policies and cluster state, scanned on every query.
pub struct Naive<'a> {
    pub policies: &'a [Policy],
    pub state: &'a ClusterState,
}

/// One L4 span an element covers: a protocol (None = every protocol, ICMP
/// included) and an inclusive port (ICMP type) range, with its L7 rules.
struct Cover<'a> {
    proto: Option<u8>,
    lo: u16,
    hi: u16,
    l7: Option<&'a L7Rules>,
}

impl Cover<'_> {
    fn covers(&self, proto: u8, port: u16) -> bool {
        match self.proto {
            None => true,
            Some(p) => p == proto && self.lo <= port && port <= self.hi,
        }
    }
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::TCP => 6,
        Protocol::UDP => 17,
        Protocol::SCTP => 132,
        Protocol::ICMP => 1,
        Protocol::ICMPv6 => 58,
        Protocol::VRRP => 112,
        Protocol::IGMP => 2,
    }
}

/// §2.1: the identity labels of a pod.
pub fn pod_labels(state: &ClusterState, pod: &Pod) -> Vec<(String, String, String)> {
    let k8s = |k: &str, v: &str| ("k8s".to_string(), k.to_string(), v.to_string());
    let mut out: Vec<Label> = pod.labels.iter().map(|(k, v)| k8s(k, v)).collect();
    out.push(k8s(NS_KEY, &pod.namespace));
    out.push(k8s(SA_KEY, &pod.service_account));
    out.push(k8s(CLUSTER_KEY, CLUSTER_NAME));
    match state.namespaces.get(&pod.namespace) {
        Some(ns) => {
            for (k, v) in &ns.labels {
                out.push(k8s(&format!("{NS_LABELS}{k}"), v));
            }
        }
        // The API server labels every namespace with its name.
        None => out.push(k8s(
            &format!("{NS_LABELS}kubernetes.io/metadata.name"),
            &pod.namespace,
        )),
    }
    out
}

/// The values a label set has for a selector key (`any` matches every source).
fn values<'l>(labels: &'l [Label], source: &'l str, key: &'l str) -> Vec<&'l str> {
    labels
        .iter()
        .filter(|(s, k, _)| k == key && (source == "any" || s == source))
        .map(|(_, _, v)| v.as_str())
        .collect()
}

/// Kubernetes label selector semantics.
fn selector_matches(sel: &Selector, labels: &[Label]) -> bool {
    sel.requirements
        .iter()
        .all(|r| requirement_matches(r, labels))
}

fn requirement_matches(r: &Requirement, labels: &[Label]) -> bool {
    let vals = values(labels, &r.key.source, &r.key.key);
    match r.op {
        Operator::In => vals.iter().any(|v| r.values.contains(*v)),
        Operator::NotIn => !vals.iter().any(|v| r.values.contains(*v)),
        Operator::Exists => !vals.is_empty(),
        Operator::DoesNotExist => vals.is_empty(),
    }
}

fn has(labels: &[Label], source: &str, key: &str, value: Option<&str>) -> bool {
    labels
        .iter()
        .any(|(s, k, v)| s == source && k == key && value.is_none_or(|x| x == v))
}

fn prefix_contains(c: &Cidr, ip: IpAddr) -> bool {
    match (c.addr, ip) {
        (IpAddr::V4(net), IpAddr::V4(a)) => {
            let mask = if c.len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(c.len))
            };
            u32::from(net) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(a)) => {
            let mask = if c.len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(c.len))
            };
            u128::from(net) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

impl<'a> Naive<'a> {
    pub fn new(policies: &'a [Policy], state: &'a ClusterState) -> Self {
        Naive { policies, state }
    }

    fn remote(&self, peer: &NPeer) -> Option<Remote<'a>> {
        Some(match peer {
            NPeer::Pod(key) => {
                let pod = self.state.pods.get(key)?;
                Remote::Pod {
                    labels: pod_labels(self.state, pod),
                    pod,
                }
            }
            NPeer::Entity(n) => Remote::Reserved(n.clone()),
            NPeer::Ip(ip) => Remote::External(*ip),
        })
    }

    /// Evaluates a connection from `from` to `to`.
    pub fn evaluate(
        &self,
        from: &NPeer,
        to: &NPeer,
        proto: Protocol,
        port: u16,
        http: Option<&HttpRequest>,
    ) -> Option<Outcome> {
        let egress = match from {
            NPeer::Pod(k) => Some(self.direction(
                self.state.pods.get(k)?,
                Direction::Egress,
                to,
                proto,
                port,
                http,
            )?),
            _ => None,
        };
        let ingress = match to {
            NPeer::Pod(k) => Some(self.direction(
                self.state.pods.get(k)?,
                Direction::Ingress,
                from,
                proto,
                port,
                http,
            )?),
            _ => None,
        };
        let ok = |d: &Option<DirOutcome>| {
            d.as_ref()
                .is_none_or(|d| d.allowed && d.l7_allowed != Some(false))
        };
        Some(Outcome {
            allowed: ok(&egress) && ok(&ingress),
            egress,
            ingress,
        })
    }

    /// The verdict of one direction of `endpoint` for a remote peer.
    pub fn direction(
        &self,
        endpoint: &Pod,
        dir: Direction,
        remote: &NPeer,
        proto: Protocol,
        port: u16,
        http: Option<&HttpRequest>,
    ) -> Option<DirOutcome> {
        let remote = self.remote(remote)?;
        let proto = proto_number(proto);
        let ep_labels = pod_labels(self.state, endpoint);
        let mut enforced = false;
        let mut best: Option<Class> = None;
        // The L7 rules of every allow element covering the connection
        // (`None`: an L3/L4 allow, which admits every request).
        let mut l7: Vec<Option<&L7Rules>> = Vec::new();
        for policy in self.policies {
            for rule in &policy.rules {
                if !self.subject_selects(policy, rule, endpoint, &ep_labels) {
                    continue;
                }
                let elements = match dir {
                    Direction::Ingress => &rule.ingress,
                    Direction::Egress => &rule.egress,
                };
                // §2.8: a rule counts toward a direction only if it has
                // entries there (for a NetworkPolicy: its policyTypes).
                let default_deny = match dir {
                    Direction::Ingress => rule.default_deny.ingress,
                    Direction::Egress => rule.default_deny.egress,
                };
                let Some(default_deny) = default_deny else {
                    assert!(elements.is_empty(), "entries without a direction flag");
                    continue;
                };
                enforced |= default_deny;
                for el in elements {
                    if !self.element_selects(policy, rule, el, &remote) {
                        continue;
                    }
                    for cover in self.covers(el, endpoint, dir) {
                        if !cover.covers(proto, port) {
                            continue;
                        }
                        let class = if el.deny {
                            Class::Deny
                        } else if cover.l7.is_some() {
                            Class::Redirect
                        } else {
                            Class::Allow
                        };
                        best = best.max(Some(class));
                        if !el.deny {
                            l7.push(cover.l7);
                        }
                    }
                }
            }
        }
        let allowed = match best {
            Some(Class::Deny) => false,
            Some(_) => true,
            None => !enforced,
        };
        // §2.7: L7 rules of several elements are merged (OR); an L3/L4
        // allow on the same connection widens L7 to everything; without
        // default deny the L7 rules are visibility only.
        let l7_allowed = match (best, http) {
            (Some(Class::Redirect), Some(req)) => Some(
                !enforced
                    || l7.iter().any(|r| match r {
                        None => true,
                        Some(L7Rules::Http(rules)) => {
                            rules.is_empty() || rules.iter().any(|h| h.matches(req))
                        }
                        Some(_) => false,
                    }),
            ),
            _ => None,
        };
        Some(DirOutcome {
            direction: dir,
            enforced,
            class: best,
            allowed,
            l7_allowed,
        })
    }

    /// §2.1: rule subjects. A CNP's (and a NetworkPolicy's) subject gets
    /// `k8s:io.kubernetes.pod.namespace=<ns>` in its matchLabels, replacing
    /// a user's match on that same key; any other requirement on the
    /// namespace (a bare key, which means `any:`, or an expression) stays
    /// and is ANDed (Cilium's `ParseToCiliumRule` only `AddMatch`es). A
    /// NetworkPolicy's keys are all `k8s:`. A CCNP's subject is not scoped.
    /// Host policies select nodes, never pods.
    fn subject_selects(&self, policy: &Policy, rule: &Rule, pod: &Pod, labels: &[Label]) -> bool {
        let Subject::EndpointSelector(sel) = &rule.subject else {
            return false;
        };
        let replaced = |source: &str| {
            sel.requirements.iter().all(|r| {
                let is_ns_match = r.key.key == NS_KEY
                    && (source == "any" || r.key.source == source)
                    && r.op == Operator::In
                    && r.values.len() == 1;
                is_ns_match || requirement_matches(r, labels)
            })
        };
        let in_ns = policy.id.namespace.as_deref() == Some(pod.namespace.as_str());
        match policy.id.kind {
            PolicyKind::CiliumNetworkPolicy => in_ns && replaced("k8s"),
            PolicyKind::NetworkPolicy => in_ns && replaced("any"),
            PolicyKind::CiliumClusterwideNetworkPolicy => selector_matches(sel, labels),
        }
    }

    fn element_selects(
        &self,
        policy: &Policy,
        rule: &Rule,
        el: &PeerRule,
        remote: &Remote,
    ) -> bool {
        match &el.peers {
            // No L3 member: every peer when the element has ports (an
            // L4-only rule); nothing otherwise (`ingress: [{}]`).
            Peers::Absent => !el.to_ports.is_empty() || !el.icmps.is_empty(),
            Peers::All => true,
            Peers::Endpoints(sels) => sels
                .iter()
                .any(|s| self.endpoint_selector_selects(policy, rule, s, remote)),
            Peers::Entities(es) => es.iter().any(|e| entity_selects(*e, remote)),
            Peers::Cidr(rules) | Peers::CidrSet(rules) => {
                rules.iter().any(|r| self.cidr_rule_selects(r, remote))
            }
            Peers::Nodes(_) | Peers::Services(_) | Peers::Fqdns(_) | Peers::Groups(_) => false,
        }
    }

    /// §2.1 and §2.13: endpoint selectors with Cilium's scoping rewrites.
    fn endpoint_selector_selects(
        &self,
        policy: &Policy,
        rule: &Rule,
        sel: &Selector,
        remote: &Remote,
    ) -> bool {
        let labels = remote.labels();
        if !selector_matches(sel, &labels) {
            return false;
        }
        // Selectors of reserved labels are left untouched.
        if sel.requirements.iter().any(|r| r.key.source == "reserved") {
            return true;
        }
        let names_namespace = sel
            .requirements
            .iter()
            .any(|r| r.key.key == NS_KEY && (r.key.source == "k8s" || r.key.source == "any"));
        let uses_ns_labels = sel
            .requirements
            .iter()
            .any(|r| r.key.key.starts_with(NS_LABELS));
        let subject_is_init = match &rule.subject {
            Subject::EndpointSelector(s) | Subject::NodeSelector(s) => s
                .requirements
                .iter()
                .any(|r| r.key.source == "reserved" && r.key.key == "init"),
        };
        let mut scoped_empty = sel.requirements.is_empty();
        match policy.id.kind {
            PolicyKind::CiliumNetworkPolicy => {
                // Peers get the policy's namespace unless they name one or
                // select on namespace labels (cross-namespace selection).
                if !names_namespace && !uses_ns_labels {
                    scoped_empty = false;
                    let ns = policy.id.namespace.as_deref().unwrap_or("default");
                    if !has(&labels, "k8s", NS_KEY, Some(ns)) {
                        return false;
                    }
                }
            }
            PolicyKind::CiliumClusterwideNetworkPolicy => {
                // Peers must be pods (have a namespace), except for a
                // subject that selects reserved:init.
                if !names_namespace && !subject_is_init {
                    scoped_empty = false;
                    if !has(&labels, "k8s", NS_KEY, None) {
                        return false;
                    }
                }
            }
            // The translation already scoped NetworkPolicy peers.
            PolicyKind::NetworkPolicy => {}
        }
        // The local cluster, unless the selector names a cluster (and not
        // for the init subject's wildcard).
        let names_cluster = sel.requirements.iter().any(|r| r.key.key == CLUSTER_KEY);
        let init_wildcard = subject_is_init && scoped_empty;
        let cluster_scoped = !(names_cluster || init_wildcard);
        !cluster_scoped || has(&labels, "k8s", CLUSTER_KEY, Some(CLUSTER_NAME))
    }

    /// §2.9: a CIDR selects the outside addresses it contains, minus its
    /// excepts; it never selects pods or nodes. A /0 also selects `world`.
    fn cidr_rule_selects(&self, r: &CidrRule, remote: &Remote) -> bool {
        let cidrs: Vec<Cidr> = match &r.source {
            CidrSource::Cidr(c) => vec![*c],
            CidrSource::CidrGroupRef(name) => self
                .state
                .cidr_groups
                .get(name)
                .map(|g| g.cidrs.clone())
                .unwrap_or_default(),
            CidrSource::CidrGroupSelector(sel) => self
                .state
                .cidr_groups
                .values()
                .filter(|g| {
                    let labels: Vec<Label> = g
                        .labels
                        .iter()
                        .map(|(k, v)| ("cidrgroup".to_string(), k.clone(), v.clone()))
                        .collect();
                    selector_matches(sel, &labels)
                })
                .flat_map(|g| g.cidrs.clone())
                .collect(),
        };
        cidrs.iter().any(|c| match remote {
            Remote::External(ip) => {
                prefix_contains(c, *ip) && !r.except.iter().any(|e| prefix_contains(e, *ip))
            }
            Remote::Reserved(n) => n == "world" && c.len == 0,
            Remote::Pod { .. } => false,
        })
    }

    /// §2.4, §2.5, §2.11: what an element covers at L4.
    fn covers<'r>(&self, el: &'r PeerRule, endpoint: &Pod, dir: Direction) -> Vec<Cover<'r>> {
        if el.to_ports.is_empty() && el.icmps.is_empty() {
            // L3-only: every protocol, ICMP included.
            return vec![Cover {
                proto: None,
                lo: 0,
                hi: u16::MAX,
                l7: None,
            }];
        }
        let mut out = Vec::new();
        for pr in &el.to_ports {
            for pp in &pr.ports {
                for proto in &pp.protocols {
                    let number = match &pp.port {
                        PortSpec::Number(n) => Some(*n),
                        PortSpec::Named(name) => self.named_port(endpoint, dir, name, *proto),
                    };
                    // `endPort` below or equal to `port` means the single
                    // port; port 0 alone means every port, but with an
                    // endPort it starts the range 0..=endPort (§1.4,
                    // `PortRangeToMaskedPorts`).
                    let (lo, hi) = match (number, pp.end_port) {
                        (None, _) => continue,
                        (Some(0), None) => (0, u16::MAX),
                        (Some(p), end) => (p, end.unwrap_or(p).max(p)),
                    };
                    out.push(Cover {
                        proto: Some(proto_number(*proto)),
                        lo,
                        hi,
                        l7: pr.rules.as_ref(),
                    });
                }
            }
        }
        for f in &el.icmps {
            let proto = match f.family {
                palisade_policy::api::IcmpFamily::IPv4 => 1,
                palisade_policy::api::IcmpFamily::IPv6 => 58,
            };
            out.push(Cover {
                proto: Some(proto),
                lo: u16::from(f.icmp_type),
                hi: u16::from(f.icmp_type),
                l7: None,
            });
        }
        out
    }

    /// §2.4: ingress names resolve against the endpoint's own container
    /// ports, egress names against every pod's; a name that is unknown or
    /// maps to several numbers contributes nothing.
    fn named_port(
        &self,
        endpoint: &Pod,
        dir: Direction,
        name: &str,
        proto: Protocol,
    ) -> Option<u16> {
        let pods: Vec<&Pod> = match dir {
            Direction::Ingress => vec![endpoint],
            Direction::Egress => self.state.pods.values().collect(),
        };
        let mut numbers: Vec<u16> = pods
            .iter()
            .flat_map(|p| p.ports.iter())
            .filter(|c| c.name.as_deref() == Some(name) && c.protocol == proto)
            .map(|c| c.port)
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        match numbers.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

/// §1.7: entities.
fn entity_selects(e: Entity, remote: &Remote) -> bool {
    let reserved =
        |names: &[&str]| matches!(remote, Remote::Reserved(n) if names.contains(&n.as_str()));
    match e {
        Entity::All => true,
        Entity::World => {
            matches!(remote, Remote::External(_))
                || reserved(&["world", "world-ipv4", "world-ipv6"])
        }
        Entity::Cluster => {
            matches!(remote, Remote::Pod { .. })
                || reserved(&[
                    "host",
                    "remote-node",
                    "init",
                    "ingress",
                    "health",
                    "unmanaged",
                    "kube-apiserver",
                ])
        }
        Entity::Host => reserved(&["host"]),
        Entity::RemoteNode => reserved(&["remote-node"]),
        Entity::KubeApiserver => reserved(&["kube-apiserver"]),
        Entity::Ingress => reserved(&["ingress"]),
        Entity::Init => reserved(&["init"]),
        Entity::Health => reserved(&["health"]),
        Entity::Unmanaged => reserved(&["unmanaged"]),
        Entity::None => false,
    }
}
