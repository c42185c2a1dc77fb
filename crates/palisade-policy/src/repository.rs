//! The rule repository: policies flattened into per-element entries, with
//! Cilium's label rewrites applied (CNP namespace scoping, CCNP scoping,
//! the local-cluster label), entities expanded and services resolved.

use crate::api::*;
use crate::cluster::ClusterState;
use crate::labels::{
    CLUSTER, DEFAULT_CLUSTER, LabelKey, LabelSet, NAMESPACE_LABELS_PREFIX, POD_NAMESPACE,
    SOURCE_ANY, SOURCE_K8S, SOURCE_RESERVED,
};
use crate::selector::{Requirement, Selector};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// What a rule element selects as peers.
#[derive(Clone, Debug)]
pub enum PeerSel {
    /// Every identity: one key with identity 0.
    Wildcard,
    /// Identities whose labels match.
    Labels(Selector),
    /// CIDR and FQDN identities whose prefix lies inside `cidr` and outside
    /// every `except`.
    Cidr { cidr: Cidr, except: Vec<Cidr> },
    /// FQDN identities with a name that matches.
    Fqdn(Arc<FqdnSelector>),
}

impl PartialEq for PeerSel {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PeerSel::Wildcard, PeerSel::Wildcard) => true,
            (PeerSel::Labels(a), PeerSel::Labels(b)) => a == b,
            (
                PeerSel::Cidr {
                    cidr: a,
                    except: ae,
                },
                PeerSel::Cidr {
                    cidr: b,
                    except: be,
                },
            ) => a == b && ae == be,
            (PeerSel::Fqdn(a), PeerSel::Fqdn(b)) => {
                a.match_name == b.match_name && a.match_pattern == b.match_pattern
            }
            _ => false,
        }
    }
}
impl Eq for PeerSel {}
impl Hash for PeerSel {
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self {
            PeerSel::Wildcard => 0u8.hash(h),
            PeerSel::Labels(s) => {
                1u8.hash(h);
                s.hash(h);
            }
            PeerSel::Cidr { cidr, except } => {
                2u8.hash(h);
                cidr.hash(h);
                except.hash(h);
            }
            PeerSel::Fqdn(f) => {
                3u8.hash(h);
                f.match_name.hash(h);
                f.match_pattern.hash(h);
            }
        }
    }
}

impl std::fmt::Display for PeerSel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerSel::Wildcard => f.write_str("any"),
            PeerSel::Labels(s) => write!(f, "{s}"),
            PeerSel::Cidr { cidr, except } if except.is_empty() => write!(f, "cidr {cidr}"),
            PeerSel::Cidr { cidr, except } => write!(
                f,
                "cidr {cidr} except {}",
                except
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            PeerSel::Fqdn(s) => write!(f, "fqdn {s}"),
        }
    }
}

/// One L4 part of an element.
#[derive(Clone, Debug)]
pub enum L4Item {
    /// L3-only: every protocol and port.
    Any,
    Port {
        proto: Protocol,
        port: PortSpec,
        end_port: Option<u16>,
        l7: Option<Arc<L7Rules>>,
        /// `toPorts[1]`.
        section: String,
    },
    Icmp {
        proto: Protocol,
        icmp_type: u8,
    },
}

/// One ingress/egress element, ready for resolution.
#[derive(Clone, Debug)]
pub struct Element {
    pub direction: Direction,
    pub deny: bool,
    /// `spec.ingress[0]`.
    pub section: String,
    pub peers: Vec<PeerSel>,
    pub l4: Vec<L4Item>,
    pub auth: Option<AuthMode>,
}

/// A rule after rewriting.
#[derive(Clone, Debug)]
pub struct CompiledRule {
    pub policy: PolicyId,
    pub subject: Selector,
    /// Host policies (nodeSelector) select the host, which Palisade does not
    /// enforce yet (Cilium's host firewall is off by default too).
    pub host_policy: bool,
    pub default_deny: DefaultDeny,
    pub elements: Vec<Element>,
    pub warnings: Vec<String>,
}

impl CompiledRule {
    pub fn selects(&self, labels: &LabelSet) -> bool {
        !self.host_policy && self.subject.matches(labels)
    }
}

fn ns_key() -> LabelKey {
    LabelKey::new(SOURCE_K8S, POD_NAMESPACE)
}

fn cluster_req() -> Requirement {
    Requirement::equals(LabelKey::new(SOURCE_K8S, CLUSTER), DEFAULT_CLUSTER)
}

fn selects_reserved(s: &Selector) -> bool {
    s.requirements
        .iter()
        .any(|r| r.key.source == SOURCE_RESERVED)
}

fn has_namespace_key(s: &Selector) -> bool {
    s.requirements.iter().any(|r| {
        r.key.key == POD_NAMESPACE && (r.key.source == SOURCE_K8S || r.key.source == SOURCE_ANY)
    })
}

fn uses_namespace_labels(s: &Selector) -> bool {
    s.requirements
        .iter()
        .any(|r| r.key.key.starts_with(NAMESPACE_LABELS_PREFIX))
}

fn has_cluster_key(s: &Selector) -> bool {
    s.requirements.iter().any(|r| r.key.key == CLUSTER)
}

/// Scopes a peer endpoint selector as Cilium's parser does.
fn scope_peer(
    sel: &Selector,
    kind: PolicyKind,
    ns: Option<&str>,
    subject_is_init: bool,
) -> Selector {
    if selects_reserved(sel) {
        return sel.clone();
    }
    let mut out = sel.clone();
    if !has_namespace_key(sel) {
        match (kind, ns) {
            (PolicyKind::CiliumClusterwideNetworkPolicy, _) | (_, None) => {
                if !subject_is_init {
                    out = out.with(Requirement::exists(ns_key()));
                }
            }
            (_, Some(ns)) => {
                if !uses_namespace_labels(sel) {
                    out = out.with(Requirement::equals(ns_key(), ns));
                }
            }
        }
    }
    let init_wildcard = subject_is_init && out.is_empty();
    if !has_cluster_key(&out) && !init_wildcard {
        out = out.with(cluster_req());
    }
    out
}

fn entity_sels(e: Entity) -> Vec<PeerSel> {
    let reserved = |name: &str| {
        PeerSel::Labels(Selector::new(vec![Requirement::exists(LabelKey::new(
            SOURCE_RESERVED,
            name,
        ))]))
    };
    match e {
        Entity::All => vec![PeerSel::Wildcard],
        Entity::World => vec![
            reserved("world"),
            reserved("world-ipv4"),
            reserved("world-ipv6"),
        ],
        Entity::Cluster => vec![
            reserved("host"),
            reserved("remote-node"),
            reserved("init"),
            reserved("ingress"),
            reserved("health"),
            reserved("unmanaged"),
            reserved("kube-apiserver"),
            PeerSel::Labels(Selector::new(vec![cluster_req()])),
        ],
        Entity::Host => vec![reserved("host")],
        Entity::RemoteNode => vec![reserved("remote-node")],
        Entity::KubeApiserver => vec![reserved("kube-apiserver")],
        Entity::Ingress => vec![reserved("ingress")],
        Entity::Init => vec![reserved("init")],
        Entity::Health => vec![reserved("health")],
        Entity::Unmanaged => vec![reserved("unmanaged")],
        Entity::None => vec![],
    }
}

/// Compiles every rule of a policy against the cluster state (services and
/// CIDR groups are looked up here).
pub fn compile_policy(p: &Policy, state: &ClusterState) -> Vec<CompiledRule> {
    p.rules.iter().map(|r| compile_rule(p, r, state)).collect()
}

fn compile_rule(p: &Policy, r: &Rule, state: &ClusterState) -> CompiledRule {
    let ns = p.id.namespace.as_deref();
    let mut warnings = Vec::new();
    let (subject, host_policy) = match &r.subject {
        Subject::EndpointSelector(s) => {
            let mut s = s.clone();
            if p.id.kind.is_namespaced()
                && let Some(ns) = ns
            {
                // Cilium sets `k8s:io.kubernetes.pod.namespace=<ns>` in the
                // subject's matchLabels, replacing a user's match on that
                // key; every other namespace requirement (a bare key means
                // `any:`; expressions) stays and is ANDed. NetworkPolicy
                // keys are all `k8s:` in Cilium.
                let knp = p.id.kind == PolicyKind::NetworkPolicy;
                s.requirements.retain(|q| {
                    !(q.key.key == POD_NAMESPACE
                        && (knp || q.key.source == SOURCE_K8S)
                        && q.op == crate::selector::Operator::In
                        && q.values.len() == 1)
                });
                s = s.with(Requirement::equals(ns_key(), ns));
            }
            (s, false)
        }
        Subject::NodeSelector(s) => {
            warnings.push(
                "host policy (nodeSelector): Palisade does not enforce host firewall rules yet"
                    .into(),
            );
            (s.clone(), true)
        }
    };
    let subject_is_init = subject
        .requirements
        .iter()
        .any(|q| q.key.source == SOURCE_RESERVED && q.key.key == "init");
    let mut elements = Vec::new();
    for el in r.ingress.iter().chain(r.egress.iter()) {
        let direction = if r.ingress.iter().any(|x| std::ptr::eq(x, el)) {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let peers = compile_peers(el, p, ns, subject_is_init, state, &mut warnings);
        let l4 = compile_l4(el);
        elements.push(Element {
            direction,
            deny: el.deny,
            section: format!("{}.{}", r.section, el.section),
            peers,
            l4,
            auth: el.authentication,
        });
    }
    CompiledRule {
        policy: p.id.clone(),
        subject,
        host_policy,
        default_deny: r.default_deny,
        elements,
        warnings,
    }
}

fn compile_peers(
    el: &PeerRule,
    p: &Policy,
    ns: Option<&str>,
    subject_is_init: bool,
    state: &ClusterState,
    warnings: &mut Vec<String>,
) -> Vec<PeerSel> {
    let kind = p.id.kind;
    match &el.peers {
        Peers::Absent => {
            if el.has_l4() {
                vec![PeerSel::Wildcard]
            } else {
                vec![]
            }
        }
        Peers::All => vec![PeerSel::Wildcard],
        Peers::Endpoints(sels) => sels
            .iter()
            .map(|s| {
                if kind == PolicyKind::NetworkPolicy {
                    // Already scoped at translation.
                    let mut s = s.clone();
                    if !has_cluster_key(&s) {
                        s = s.with(cluster_req());
                    }
                    PeerSel::Labels(s)
                } else {
                    PeerSel::Labels(scope_peer(s, kind, ns, subject_is_init))
                }
            })
            .collect(),
        Peers::Nodes(sels) => {
            // Nodes have no identities of their own here: a node selector
            // selects the host/remote-node identities when a node matches.
            let mut out = Vec::new();
            for s in sels {
                let node_match = state.nodes.values().any(|n| {
                    let labels = LabelSet::new(
                        n.labels
                            .iter()
                            .map(|(k, v)| crate::labels::Label::new("node", k, v))
                            .collect(),
                    );
                    s.matches(&labels)
                });
                if node_match {
                    out.extend(entity_sels(Entity::RemoteNode));
                    out.extend(entity_sels(Entity::Host));
                }
            }
            out
        }
        Peers::Cidr(rules) | Peers::CidrSet(rules) => {
            let mut out = Vec::new();
            for r in rules {
                let cidrs: Vec<Cidr> = match &r.source {
                    CidrSource::Cidr(c) => vec![*c],
                    CidrSource::CidrGroupRef(name) => match state.cidr_groups.get(name) {
                        Some(g) => g.cidrs.clone(),
                        None => {
                            warnings.push(format!(
                                "{}: CiliumCIDRGroup \"{name}\" does not exist; the entry selects nothing",
                                el.section
                            ));
                            vec![]
                        }
                    },
                    CidrSource::CidrGroupSelector(sel) => state
                        .cidr_groups
                        .values()
                        .filter(|g| {
                            let labels = LabelSet::new(
                                g.labels
                                    .iter()
                                    .map(|(k, v)| crate::labels::Label::new("cidrgroup", k, v))
                                    .collect(),
                            );
                            sel.matches(&labels)
                        })
                        .flat_map(|g| g.cidrs.clone())
                        .collect(),
                };
                for c in cidrs {
                    out.push(PeerSel::Cidr {
                        cidr: c,
                        except: r.except.clone(),
                    });
                }
            }
            out
        }
        Peers::Entities(ents) => ents.iter().flat_map(|e| entity_sels(*e)).collect(),
        Peers::Services(svcs) => {
            let mut out = Vec::new();
            for s in svcs {
                match s {
                    ServiceRef::K8sService { name, namespace } => {
                        let sns = namespace.as_deref().or(ns).unwrap_or("default");
                        match state.services.get(&format!("{sns}/{name}")) {
                            Some(svc) => out.extend(service_sel(svc, warnings, &el.section)),
                            None => warnings.push(format!(
                                "{}: service {sns}/{name} does not exist; the entry selects nothing until it does",
                                el.section
                            )),
                        }
                    }
                    ServiceRef::K8sServiceSelector {
                        selector,
                        namespace,
                    } => {
                        let sns = namespace.as_deref().or(ns);
                        for svc in state.services.values() {
                            if sns.is_some_and(|n| n != svc.namespace) {
                                continue;
                            }
                            let labels = LabelSet::new(
                                svc.labels
                                    .iter()
                                    .map(|(k, v)| crate::labels::Label::new(SOURCE_K8S, k, v))
                                    .collect(),
                            );
                            if selector.matches(&labels) {
                                out.extend(service_sel(svc, warnings, &el.section));
                            }
                        }
                    }
                    ServiceRef::Empty => {}
                }
            }
            out
        }
        Peers::Fqdns(sels) => sels
            .iter()
            .map(|s| PeerSel::Fqdn(Arc::new(s.clone())))
            .collect(),
        Peers::Groups(_) => {
            warnings.push(format!(
                "{}: toGroups/fromGroups (cloud provider groups) are not supported; the entry selects nothing",
                el.section
            ));
            vec![]
        }
    }
}

fn service_sel(
    svc: &crate::cluster::Service,
    warnings: &mut Vec<String>,
    section: &str,
) -> Option<PeerSel> {
    match &svc.selector {
        Some(sel) => {
            let mut reqs: Vec<Requirement> = sel
                .iter()
                .map(|(k, v)| Requirement::equals(LabelKey::new(SOURCE_K8S, k), v))
                .collect();
            reqs.push(Requirement::equals(ns_key(), &svc.namespace));
            reqs.push(cluster_req());
            Some(PeerSel::Labels(Selector::new(reqs)))
        }
        None => {
            warnings.push(format!(
                "{section}: service {}/{} has no selector; its backends are not known to Palisade",
                svc.namespace, svc.name
            ));
            None
        }
    }
}

fn compile_l4(el: &PeerRule) -> Vec<L4Item> {
    if !el.has_l4() {
        return vec![L4Item::Any];
    }
    let mut out = Vec::new();
    for pr in &el.to_ports {
        let l7 = pr.rules.clone().map(Arc::new);
        for pp in &pr.ports {
            for proto in &pp.protocols {
                out.push(L4Item::Port {
                    proto: *proto,
                    port: pp.port.clone(),
                    end_port: pp.end_port,
                    l7: l7.clone(),
                    section: pr.section.clone(),
                });
            }
        }
    }
    for f in &el.icmps {
        out.push(L4Item::Icmp {
            proto: match f.family {
                IcmpFamily::IPv4 => Protocol::ICMP,
                IcmpFamily::IPv6 => Protocol::ICMPv6,
            },
            icmp_type: f.icmp_type,
        });
    }
    out
}
