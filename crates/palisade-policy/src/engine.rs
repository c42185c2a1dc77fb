//! The policy engine: cluster state and policies in, one resolved
//! `PolicyMap` per endpoint out, kept up to date incrementally (each change
//! yields the deltas the datapath applies).

use crate::api::*;
use crate::cluster::{ClusterState, Pod};
use crate::identity::{self, IdentityAllocator, NumericIdentity, WILDCARD};
use crate::ipcache::IpCache;
use crate::labels::LabelSet;
use crate::manifest::Object;
use crate::mapstate::{
    Contribution, Enforcement, Key, L7Part, MapDelta, PolicyMap, RuleRef, Verdict, build_entries,
    port_range_blocks,
};
use crate::repository::{CompiledRule, L4Item, PeerSel, compile_policy};
use crate::selectorcache::{SelId, SelectorCache};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// One (selector × L4 key) filter of a resolved endpoint, kept so that a
/// new identity can be added without resolving the endpoint again.
#[derive(Clone, Debug)]
struct Filter {
    sel: SelId,
    direction: Direction,
    proto: u8,
    port: u16,
    prefix_len: u8,
    contribution: Contribution,
}

#[derive(Clone, Debug, Default)]
struct ResolvedEndpoint {
    identity: NumericIdentity,
    map: PolicyMap,
    filters: Vec<Filter>,
}

/// The engine. Pure and synchronous.
#[derive(Clone, Debug)]
pub struct Engine {
    state: ClusterState,
    policies: BTreeMap<PolicyId, Policy>,
    rules: Vec<Arc<CompiledRule>>,
    /// (label key, value) of a subject requirement → rules (subject index).
    rule_index: HashMap<(String, String), Vec<usize>>,
    rule_unindexed: Vec<usize>,
    identities: IdentityAllocator,
    ipcache: IpCache,
    pod_identity: BTreeMap<String, NumericIdentity>,
    cidr_identity: BTreeMap<Cidr, NumericIdentity>,
    fqdn_names: BTreeMap<IpAddr, BTreeSet<String>>,
    fqdn_identity: BTreeMap<IpAddr, NumericIdentity>,
    cache: SelectorCache,
    endpoints: BTreeMap<String, ResolvedEndpoint>,
    /// Only pods on this node are endpoints; `None`: every pod.
    local_node: Option<String>,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    pub fn new() -> Self {
        let identities = IdentityAllocator::new();
        let cache = SelectorCache::new(&identities);
        Engine {
            state: ClusterState::default(),
            policies: BTreeMap::new(),
            rules: Vec::new(),
            rule_index: HashMap::new(),
            rule_unindexed: Vec::new(),
            identities,
            ipcache: IpCache::new(),
            pod_identity: BTreeMap::new(),
            cidr_identity: BTreeMap::new(),
            fqdn_names: BTreeMap::new(),
            fqdn_identity: BTreeMap::new(),
            cache,
            endpoints: BTreeMap::new(),
            local_node: None,
        }
    }

    /// Builds an engine from decoded objects in one go.
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut e = Engine::new();
        for o in objects {
            e.stage(o);
        }
        e.rebuild();
        e
    }

    /// Restricts endpoints to the pods of one node (the agent's view).
    pub fn set_local_node(&mut self, node: Option<String>) -> BTreeMap<String, MapDelta> {
        self.local_node = node;
        self.rebuild()
    }

    fn stage(&mut self, o: Object) {
        match o {
            Object::Policy(p) => {
                self.policies.insert(p.id.clone(), p);
            }
            Object::Namespace(n) => {
                self.state.namespaces.insert(n.name.clone(), n);
            }
            Object::Pod(p) => {
                self.state.pods.insert(p.key(), p);
            }
            Object::Node(n) => {
                self.state.nodes.insert(n.name.clone(), n);
            }
            Object::Service(s) => {
                self.state
                    .services
                    .insert(format!("{}/{}", s.namespace, s.name), s);
            }
            Object::CidrGroup(g) => {
                self.state.cidr_groups.insert(g.name.clone(), g);
            }
            Object::Skipped { .. } => {}
        }
    }

    /// Applies one object and returns the deltas per endpoint.
    pub fn apply(&mut self, o: Object) -> BTreeMap<String, MapDelta> {
        if let Object::Pod(p) = &o
            && self.pod_only_adds_identity(p)
        {
            let pod = p.clone();
            self.stage(o);
            return self.add_pod_incremental(&pod);
        }
        self.stage(o);
        self.rebuild()
    }

    /// Applies several objects at once (one rebuild).
    pub fn apply_all(
        &mut self,
        objects: impl IntoIterator<Item = Object>,
    ) -> BTreeMap<String, MapDelta> {
        for o in objects {
            self.stage(o);
        }
        self.rebuild()
    }

    pub fn delete_policy(&mut self, id: &PolicyId) -> BTreeMap<String, MapDelta> {
        if self.policies.remove(id).is_none() {
            return BTreeMap::new();
        }
        self.rebuild()
    }

    pub fn delete_pod(&mut self, key: &str) -> BTreeMap<String, MapDelta> {
        if self.state.pods.remove(key).is_none() {
            return BTreeMap::new();
        }
        self.rebuild()
    }

    pub fn delete_namespace(&mut self, name: &str) -> BTreeMap<String, MapDelta> {
        self.state.namespaces.remove(name);
        self.rebuild()
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values()
    }

    pub fn policy(&self, id: &PolicyId) -> Option<&Policy> {
        self.policies.get(id)
    }

    pub fn identities(&self) -> &IdentityAllocator {
        &self.identities
    }

    pub fn ipcache(&self) -> &IpCache {
        &self.ipcache
    }

    pub fn rules(&self) -> &[Arc<CompiledRule>] {
        &self.rules
    }

    /// Warnings from compiling the rules (unsupported features, missing
    /// services or CIDR groups).
    pub fn warnings(&self) -> Vec<String> {
        self.rules
            .iter()
            .flat_map(|r| r.warnings.iter().map(move |w| format!("{}: {w}", r.policy)))
            .collect()
    }

    pub fn endpoint_map(&self, pod: &str) -> Option<&PolicyMap> {
        self.endpoints.get(pod).map(|e| &e.map)
    }

    pub fn endpoint_identity(&self, pod: &str) -> Option<NumericIdentity> {
        self.pod_identity.get(pod).copied()
    }

    pub fn endpoints(&self) -> impl Iterator<Item = (&String, NumericIdentity, &PolicyMap)> {
        self.endpoints.iter().map(|(k, e)| (k, e.identity, &e.map))
    }

    /// The learned DNS names of each address.
    pub fn learned_fqdns(&self) -> impl Iterator<Item = (IpAddr, &BTreeSet<String>)> {
        self.fqdn_names.iter().map(|(ip, names)| (*ip, names))
    }

    /// Records that `name` resolved to `ip` (the DNS proxy saw the answer);
    /// gives the address an FQDN identity and returns the deltas.
    pub fn learn_fqdn(&mut self, name: &str, ip: IpAddr) -> BTreeMap<String, MapDelta> {
        let name = crate::fqdn::normalize(name);
        let names = self.fqdn_names.entry(ip).or_default();
        if !names.insert(name) {
            return BTreeMap::new();
        }
        let names: Vec<String> = names.iter().cloned().collect();
        let mut deltas = BTreeMap::new();
        if let Some(old) = self.fqdn_identity.remove(&ip) {
            merge_deltas(&mut deltas, self.remove_identity(old));
            self.identities.remove_local(old);
        }
        let prefix = Cidr::host(ip);
        let (id, _) = self.identities.allocate_fqdn(names, prefix);
        self.fqdn_identity.insert(ip, id);
        self.ipcache.upsert(prefix, id);
        merge_deltas(&mut deltas, self.add_identity(id));
        deltas
    }

    /// Forgets an FQDN address (its TTL ran out).
    pub fn forget_fqdn(&mut self, ip: IpAddr) -> BTreeMap<String, MapDelta> {
        self.fqdn_names.remove(&ip);
        let Some(id) = self.fqdn_identity.remove(&ip) else {
            return BTreeMap::new();
        };
        let prefix = Cidr::host(ip);
        match self.cidr_identity.get(&prefix) {
            Some(cid) => {
                self.ipcache.upsert(prefix, *cid);
            }
            None => {
                self.ipcache.remove(&prefix);
            }
        }
        let d = self.remove_identity(id);
        self.identities.remove_local(id);
        d
    }

    fn is_endpoint(&self, pod: &Pod) -> bool {
        !pod.host_network
            && match &self.local_node {
                None => true,
                Some(n) => pod.node_name.as_deref() == Some(n.as_str()),
            }
    }

    fn pod_labels(&self, pod: &Pod) -> LabelSet {
        identity::pod_labels(
            &pod.namespace,
            &pod.labels,
            &pod.service_account,
            &self.state.namespace_labels(&pod.namespace),
        )
    }

    /// A new pod whose arrival changes nothing but identities (no named
    /// ports, not replacing an existing pod) can be added incrementally.
    fn pod_only_adds_identity(&self, p: &Pod) -> bool {
        !self.state.pods.contains_key(&p.key())
            && p.ports.iter().all(|c| c.name.is_none())
            && !self.endpoints.is_empty()
    }

    fn add_pod_incremental(&mut self, pod: &Pod) -> BTreeMap<String, MapDelta> {
        let labels = self.pod_labels(pod);
        let (id, new) = self.identities.allocate_endpoint(labels);
        self.pod_identity.insert(pod.key(), id);
        for ip in &pod.ips {
            self.ipcache.upsert(Cidr::host(*ip), id);
        }
        let mut deltas = if new {
            self.add_identity(id)
        } else {
            BTreeMap::new()
        };
        if self.is_endpoint(pod) {
            let ep = self.resolve(pod, id);
            let delta = ep.map.diff(&PolicyMap::default());
            self.endpoints.insert(pod.key(), ep);
            deltas.insert(pod.key(), delta);
        }
        deltas
    }

    /// Adds an identity that already exists in the allocator to every
    /// endpoint's map: only that identity's entries change.
    fn add_identity(&mut self, id: NumericIdentity) -> BTreeMap<String, MapDelta> {
        let Some(identity) = self.identities.get(id).cloned() else {
            return BTreeMap::new();
        };
        let sels: BTreeSet<SelId> = self.cache.identity_added(&identity).into_iter().collect();
        let mut deltas = BTreeMap::new();
        if sels.is_empty() {
            return deltas;
        }
        for (name, ep) in self.endpoints.iter_mut() {
            let mut contributions: BTreeMap<Key, Vec<Contribution>> = BTreeMap::new();
            for f in ep.filters.iter().filter(|f| sels.contains(&f.sel)) {
                let key = Key {
                    identity: id,
                    direction: f.direction,
                    proto: f.proto,
                    port: f.port,
                    prefix_len: f.prefix_len,
                };
                contributions
                    .entry(key)
                    .or_default()
                    .push(f.contribution.clone());
            }
            if contributions.is_empty() {
                continue;
            }
            let entries = build_entries(&contributions);
            let mut delta = MapDelta::default();
            for (k, e) in entries {
                delta.adds.push((k, e.clone()));
                ep.map.entries.insert(k, e);
            }
            for (k, cs) in contributions {
                ep.map.contributions.insert(k, cs);
            }
            deltas.insert(name.clone(), delta);
        }
        deltas
    }

    fn remove_identity(&mut self, id: NumericIdentity) -> BTreeMap<String, MapDelta> {
        let Some(identity) = self.identities.get(id).cloned() else {
            return BTreeMap::new();
        };
        self.cache.identity_removed(&identity);
        let mut deltas = BTreeMap::new();
        for (name, ep) in self.endpoints.iter_mut() {
            let keys: Vec<Key> = ep
                .map
                .entries
                .keys()
                .filter(|k| k.identity == id)
                .copied()
                .collect();
            ep.map.contributions.retain(|k, _| k.identity != id);
            if keys.is_empty() {
                continue;
            }
            for k in &keys {
                ep.map.entries.remove(k);
            }
            deltas.insert(
                name.clone(),
                MapDelta {
                    adds: vec![],
                    removes: keys,
                },
            );
        }
        deltas
    }

    /// Recomputes everything from the staged state and returns the deltas
    /// against the previous maps.
    pub fn rebuild(&mut self) -> BTreeMap<String, MapDelta> {
        // Compile rules.
        self.rules = self
            .policies
            .values()
            .flat_map(|p| compile_policy(p, &self.state))
            .map(Arc::new)
            .collect();
        self.rule_index.clear();
        self.rule_unindexed.clear();
        for (i, r) in self.rules.iter().enumerate() {
            match r
                .subject
                .requirements
                .iter()
                .find(|q| {
                    q.op == crate::selector::Operator::In
                        && q.values.len() == 1
                        && q.key.key != crate::labels::POD_NAMESPACE
                })
                .or_else(|| {
                    r.subject
                        .requirements
                        .iter()
                        .find(|q| q.op == crate::selector::Operator::In && q.values.len() == 1)
                }) {
                Some(q) => {
                    let v = q.values.iter().next().cloned().unwrap_or_default();
                    self.rule_index
                        .entry((q.key.key.clone(), v))
                        .or_default()
                        .push(i);
                }
                None => self.rule_unindexed.push(i),
            }
        }
        // Identities: reserved, pods, CIDR prefixes, FQDN addresses.
        let mut identities = IdentityAllocator::new();
        let mut ipcache = IpCache::new();
        let mut pod_identity = BTreeMap::new();
        let pods: Vec<Pod> = self.state.pods.values().cloned().collect();
        for pod in &pods {
            let (id, _) = identities.allocate_endpoint(self.pod_labels(pod));
            pod_identity.insert(pod.key(), id);
            if !pod.host_network {
                for ip in &pod.ips {
                    ipcache.upsert(Cidr::host(*ip), id);
                }
            }
        }
        let mut prefixes = BTreeSet::new();
        for r in &self.rules {
            for el in &r.elements {
                for p in &el.peers {
                    if let PeerSel::Cidr { cidr, except } = p {
                        prefixes.insert(*cidr);
                        prefixes.extend(except.iter().copied());
                    }
                }
            }
        }
        let mut cidr_identity = BTreeMap::new();
        for c in prefixes {
            let (id, _) = identities.allocate_cidr(c);
            cidr_identity.insert(c, id);
            if c.len > 0 {
                ipcache.upsert(c, id);
            }
        }
        let mut fqdn_identity = BTreeMap::new();
        for (ip, names) in &self.fqdn_names {
            let prefix = Cidr::host(*ip);
            let (id, _) = identities.allocate_fqdn(names.iter().cloned().collect(), prefix);
            fqdn_identity.insert(*ip, id);
            ipcache.upsert(prefix, id);
        }
        self.identities = identities;
        self.ipcache = ipcache;
        self.pod_identity = pod_identity;
        self.cidr_identity = cidr_identity;
        self.fqdn_identity = fqdn_identity;
        self.cache = SelectorCache::new(&self.identities);
        // Resolve every endpoint.
        let old = std::mem::take(&mut self.endpoints);
        let mut endpoints = BTreeMap::new();
        for pod in &pods {
            if !self.is_endpoint(pod) {
                continue;
            }
            let id = self.pod_identity[&pod.key()];
            endpoints.insert(pod.key(), self.resolve(pod, id));
        }
        let mut deltas = BTreeMap::new();
        let empty = PolicyMap::default();
        for (k, ep) in &endpoints {
            let before = old.get(k).map_or(&empty, |e| &e.map);
            let d = ep.map.diff(before);
            if !d.is_empty() {
                deltas.insert(k.clone(), d);
            }
        }
        for (k, ep) in &old {
            if !endpoints.contains_key(k) {
                deltas.insert(
                    k.clone(),
                    MapDelta {
                        adds: vec![],
                        removes: ep.map.entries.keys().copied().collect(),
                    },
                );
            }
        }
        self.endpoints = endpoints;
        deltas
    }

    /// The rules whose subject selects these labels.
    pub fn selecting_rules(&self, labels: &LabelSet) -> Vec<Arc<CompiledRule>> {
        let mut cands: BTreeSet<usize> = self.rule_unindexed.iter().copied().collect();
        for l in labels.iter() {
            if let Some(v) = self.rule_index.get(&(l.key.clone(), l.value.clone())) {
                cands.extend(v.iter().copied());
            }
        }
        cands
            .into_iter()
            .map(|i| &self.rules[i])
            .filter(|r| r.selects(labels))
            .cloned()
            .collect()
    }

    /// Resolves a named port. Egress names are looked up in every pod, so
    /// `egress_memo` keeps the answers of one resolution.
    fn named_port(
        &self,
        pod: &Pod,
        dir: Direction,
        name: &str,
        proto: Protocol,
        egress_memo: &mut HashMap<(String, Protocol), Option<u16>>,
    ) -> Option<u16> {
        match dir {
            Direction::Ingress => pod
                .ports
                .iter()
                .find(|c| c.name.as_deref() == Some(name) && c.protocol == proto)
                .map(|c| c.port),
            Direction::Egress => {
                if let Some(p) = egress_memo.get(&(name.to_string(), proto)) {
                    return *p;
                }
                let ports: BTreeSet<u16> = self
                    .state
                    .pods
                    .values()
                    .flat_map(|p| p.ports.iter())
                    .filter(|c| c.name.as_deref() == Some(name) && c.protocol == proto)
                    .map(|c| c.port)
                    .collect();
                // A name that maps to different numbers contributes nothing.
                let port = (ports.len() == 1)
                    .then(|| ports.into_iter().next())
                    .flatten();
                egress_memo.insert((name.to_string(), proto), port);
                port
            }
        }
    }

    /// Resolves one endpoint again from the current state, replaces its
    /// map and returns it; `None` if the pod is not an endpoint. This is
    /// the per-endpoint unit of work of `rebuild` (rule selection, selector
    /// lookups, expansion over identities, entries), with the engine's
    /// selector cache as it is.
    pub fn resolve_endpoint(&mut self, key: &str) -> Option<&PolicyMap> {
        let pod = self.state.pods.get(key)?.clone();
        if !self.is_endpoint(&pod) {
            return None;
        }
        let id = *self.pod_identity.get(key)?;
        let ep = self.resolve(&pod, id);
        self.endpoints.insert(key.to_string(), ep);
        self.endpoints.get(key).map(|e| &e.map)
    }

    /// Resolves one endpoint's map against `cache` without changing the
    /// engine: with a fresh `SelectorCache::new(engine.identities())` it
    /// includes computing what every selector of its rules selects (what
    /// benchmarks call a cold cache).
    pub fn resolve_endpoint_in(&self, key: &str, cache: &mut SelectorCache) -> Option<PolicyMap> {
        let pod = self.state.pods.get(key)?;
        if !self.is_endpoint(pod) {
            return None;
        }
        let id = *self.pod_identity.get(key)?;
        Some(self.resolve_in(cache, pod, id).map)
    }

    fn resolve(&mut self, pod: &Pod, id: NumericIdentity) -> ResolvedEndpoint {
        let mut cache = std::mem::take(&mut self.cache);
        let ep = self.resolve_in(&mut cache, pod, id);
        self.cache = cache;
        ep
    }

    fn resolve_in(
        &self,
        cache: &mut SelectorCache,
        pod: &Pod,
        id: NumericIdentity,
    ) -> ResolvedEndpoint {
        let labels = self
            .identities
            .get(id)
            .map(|i| i.labels.clone())
            .unwrap_or_default();
        let rules = self.selecting_rules(&labels);
        let mut filters = Vec::new();
        let mut egress_memo = HashMap::new();
        let mut map = PolicyMap::default();
        for dir in [Direction::Ingress, Direction::Egress] {
            let selecting: Vec<&Arc<CompiledRule>> = rules
                .iter()
                .filter(|r| match dir {
                    Direction::Ingress => r.default_deny.ingress.is_some(),
                    Direction::Egress => r.default_deny.egress.is_some(),
                })
                .collect();
            let default_deny = selecting.iter().any(|r| match dir {
                Direction::Ingress => r.default_deny.ingress == Some(true),
                Direction::Egress => r.default_deny.egress == Some(true),
            });
            let enforcement = Enforcement {
                default_deny,
                selected_by: selecting.iter().map(|r| r.policy.clone()).collect(),
            };
            if !default_deny {
                // Default allow (no policy, or only enableDefaultDeny: false).
                let key = Key::any(WILDCARD, dir);
                map.contributions.entry(key).or_default();
            }
            for r in &selecting {
                for el in r.elements.iter().filter(|e| e.direction == dir) {
                    let rule_base = RuleRef {
                        policy: r.policy.clone(),
                        section: el.section.clone(),
                    };
                    for item in &el.l4 {
                        let (keys, verdict, l7, section) =
                            self.l4_keys(pod, dir, item, el.deny, default_deny, &mut egress_memo);
                        let rule = match section {
                            Some(s) => RuleRef {
                                policy: rule_base.policy.clone(),
                                section: format!("{}.{s}", rule_base.section),
                            },
                            None => rule_base.clone(),
                        };
                        let contribution = Contribution {
                            rule,
                            verdict,
                            l7,
                            auth: if el.deny { None } else { el.auth },
                        };
                        for peer in &el.peers {
                            let sel = cache.intern(peer, &self.identities);
                            for (proto, port, prefix_len) in &keys {
                                filters.push(Filter {
                                    sel,
                                    direction: dir,
                                    proto: *proto,
                                    port: *port,
                                    prefix_len: *prefix_len,
                                    contribution: contribution.clone(),
                                });
                            }
                        }
                    }
                }
            }
            match dir {
                Direction::Ingress => map.ingress = enforcement,
                Direction::Egress => map.egress = enforcement,
            }
        }
        // Expand filters over the identities their selectors select.
        for f in &filters {
            let ids: Vec<NumericIdentity> = match cache.get(f.sel) {
                PeerSel::Wildcard => vec![WILDCARD],
                _ => cache.selected(f.sel).iter().copied().collect(),
            };
            for identity in ids {
                let key = Key {
                    identity,
                    direction: f.direction,
                    proto: f.proto,
                    port: f.port,
                    prefix_len: f.prefix_len,
                };
                map.contributions
                    .entry(key)
                    .or_default()
                    .push(f.contribution.clone());
            }
        }
        // Default-allow keys with no contribution become plain allows.
        let mut entries = build_entries(&map.contributions);
        for dir in [Direction::Ingress, Direction::Egress] {
            if !map.enforcement(dir).default_deny {
                let key = Key::any(WILDCARD, dir);
                entries
                    .entry(key)
                    .or_insert_with(|| crate::mapstate::Entry {
                        verdict: Verdict::Allow,
                        precedence: Verdict::Allow.precedence(),
                        auth_type: 0,
                        derived_from: BTreeSet::new(),
                    });
            }
        }
        map.entries = entries;
        ResolvedEndpoint {
            identity: id,
            map,
            filters,
        }
    }

    /// The (proto, port, prefix) keys of one L4 item, its verdict and L7.
    #[allow(clippy::type_complexity)]
    fn l4_keys(
        &self,
        pod: &Pod,
        dir: Direction,
        item: &L4Item,
        deny: bool,
        default_deny: bool,
        egress_memo: &mut HashMap<(String, Protocol), Option<u16>>,
    ) -> (Vec<(u8, u16, u8)>, Verdict, L7Part, Option<String>) {
        let plain = if deny { Verdict::Deny } else { Verdict::Allow };
        match item {
            L4Item::Any => (vec![(0, 0, 0)], plain, L7Part::AllowAll, None),
            L4Item::Icmp { proto, icmp_type } => (
                vec![(proto.number(), u16::from(*icmp_type), 24)],
                plain,
                L7Part::AllowAll,
                Some("icmps".into()),
            ),
            L4Item::Port {
                proto,
                port,
                end_port,
                l7,
                section,
            } => {
                let number = match port {
                    PortSpec::Number(n) => Some(*n),
                    PortSpec::Named(name) => self.named_port(pod, dir, name, *proto, egress_memo),
                };
                // Port 0 alone is every port of the protocol; with an
                // endPort it is the range 0..=endPort, as Cilium's
                // `PortRangeToMaskedPorts` reads it.
                let keys = match number {
                    None => vec![],
                    Some(0) if end_port.is_none() => vec![(proto.number(), 0, 8)],
                    Some(lo) => {
                        let hi = end_port.unwrap_or(lo).max(lo);
                        port_range_blocks(lo, hi)
                            .into_iter()
                            .map(|(p, bits)| (proto.number(), p, 8 + bits))
                            .collect()
                    }
                };
                let (verdict, part) = match (deny, l7) {
                    (true, _) => (Verdict::Deny, L7Part::AllowAll),
                    (false, Some(rules)) => {
                        let part = if default_deny {
                            L7Part::Rules(rules.clone())
                        } else {
                            // Visibility only: without default deny the L7
                            // rules get a wildcard appended.
                            L7Part::AllowAll
                        };
                        (Verdict::Redirect(rules.kind()), part)
                    }
                    (false, None) => (Verdict::Allow, L7Part::AllowAll),
                };
                (keys, verdict, part, Some(section.clone()))
            }
        }
    }

    /// The identity an address has from the point of view of a pod on
    /// `node` (its own node's addresses are `host`, other nodes' are
    /// `remote-node`).
    pub fn identity_of_ip(&self, ip: IpAddr, node: Option<&str>) -> NumericIdentity {
        if let Some(n) = self.state.node_by_ip(ip) {
            return if Some(n.name.as_str()) == node {
                identity::HOST
            } else {
                identity::REMOTE_NODE
            };
        }
        self.ipcache.lookup(ip).0
    }
}

fn merge_deltas(into: &mut BTreeMap<String, MapDelta>, from: BTreeMap<String, MapDelta>) {
    for (k, d) in from {
        let e = into.entry(k).or_default();
        e.adds.extend(d.adds);
        e.removes.extend(d.removes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Options, parse_file};
    use crate::trace::{PeerSpec, Query, trace};

    const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: default, labels: {app: server}}
status: {podIP: 10.0.0.2}
"#;

    fn engine(policies: &str) -> Engine {
        let text = format!("{PODS}---\n{policies}");
        let objects = parse_file("test.yaml", &text, &Options::default())
            .into_iter()
            .map(|d| {
                assert!(d.errors.is_empty(), "{:?}", d.errors);
                d.object.expect("object")
            });
        Engine::from_objects(objects)
    }

    fn allowed(e: &Engine, from: &str, to: &str, protocol: Protocol, port: u16) -> bool {
        trace(
            e,
            &Query {
                from: PeerSpec::parse(from).expect("peer"),
                to: PeerSpec::parse(to).expect("peer"),
                protocol,
                port,
                l7: None,
            },
        )
        .expect("trace")
        .allowed
    }

    /// `port: "0"` with an `endPort` is the range 0..=endPort, not every
    /// port (Cilium's `PortRangeToMaskedPorts` wildcards only 0-0 and
    /// 0-65535).
    #[test]
    fn port_zero_with_end_port_is_a_range() {
        let e = engine(
            r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - toPorts: [{ports: [{port: "0", endPort: 50, protocol: TCP}]}]
"#,
        );
        let (c, s) = ("default/client", "default/server");
        assert!(allowed(&e, c, s, Protocol::TCP, 0));
        assert!(allowed(&e, c, s, Protocol::TCP, 50));
        assert!(!allowed(&e, c, s, Protocol::TCP, 51));
        assert!(!allowed(&e, c, s, Protocol::TCP, 80));
        let e = engine(
            r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - toPorts: [{ports: [{port: "0", endPort: 65535, protocol: TCP}]}]
"#,
        );
        assert!(allowed(&e, c, s, Protocol::TCP, 80));
        assert!(!allowed(&e, c, s, Protocol::UDP, 80));
    }

    /// A CNP's subject gets the policy's namespace as its `k8s:` match;
    /// a bare (`any:`) namespace key or a namespace expression is not
    /// replaced but ANDed, as Cilium's `ParseToCiliumRule` does.
    #[test]
    fn cnp_subject_namespace_requirements_are_anded() {
        let policy = |selector: &str| {
            format!(
                r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: p, namespace: default}}
spec:
  endpointSelector: {selector}
  ingress: [{{}}]
"#
            )
        };
        let (c, s) = ("default/client", "default/server");
        // The `k8s:` match is replaced by the policy's namespace.
        let e = engine(&policy(
            r#"{matchLabels: {"k8s:io.kubernetes.pod.namespace": other}}"#,
        ));
        assert!(!allowed(&e, c, s, Protocol::TCP, 80));
        // A bare key names another namespace: nothing is selected.
        let e = engine(&policy(
            r#"{matchLabels: {io.kubernetes.pod.namespace: other}}"#,
        ));
        assert!(allowed(&e, c, s, Protocol::TCP, 80));
        let e = engine(&policy(
            r#"{matchExpressions: [{key: io.kubernetes.pod.namespace, operator: NotIn, values: [default]}]}"#,
        ));
        assert!(allowed(&e, c, s, Protocol::TCP, 80));
        // A bare key naming the policy's own namespace still selects.
        let e = engine(&policy(
            r#"{matchLabels: {io.kubernetes.pod.namespace: default}}"#,
        ));
        assert!(!allowed(&e, c, s, Protocol::TCP, 80));
    }
}
