//! Security identities: reserved ones with Cilium's numbers, cluster
//! identities for pods (allocated deterministically per label set, from 256
//! up), and node-local identities for CIDR prefixes and DNS names.

use crate::api::Cidr;
use crate::labels::{
    CLUSTER, DEFAULT_CLUSTER, Label, LabelSet, NAMESPACE_LABELS_PREFIX, POD_NAMESPACE,
    SERVICE_ACCOUNT, SOURCE_CIDR, SOURCE_FQDN, SOURCE_K8S,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// A numeric security identity. 0 is the wildcard in policy map keys.
pub type NumericIdentity = u32;

pub const WILDCARD: NumericIdentity = 0;
pub const HOST: NumericIdentity = 1;
pub const WORLD: NumericIdentity = 2;
pub const UNMANAGED: NumericIdentity = 3;
pub const HEALTH: NumericIdentity = 4;
pub const INIT: NumericIdentity = 5;
pub const REMOTE_NODE: NumericIdentity = 6;
pub const KUBE_APISERVER: NumericIdentity = 7;
pub const INGRESS: NumericIdentity = 8;
pub const WORLD_IPV4: NumericIdentity = 9;
pub const WORLD_IPV6: NumericIdentity = 10;

/// First cluster-global identity; the range ends at 65535.
pub const CLUSTER_MIN: NumericIdentity = 256;
pub const CLUSTER_MAX: NumericIdentity = 65535;
/// Node-local (CIDR, FQDN) identities carry this bit.
pub const LOCAL_FLAG: NumericIdentity = 1 << 24;

/// The reserved identities and their names.
pub const RESERVED: &[(NumericIdentity, &str)] = &[
    (HOST, "host"),
    (WORLD, "world"),
    (UNMANAGED, "unmanaged"),
    (HEALTH, "health"),
    (INIT, "init"),
    (REMOTE_NODE, "remote-node"),
    (KUBE_APISERVER, "kube-apiserver"),
    (INGRESS, "ingress"),
    (WORLD_IPV4, "world-ipv4"),
    (WORLD_IPV6, "world-ipv6"),
];

pub fn reserved_name(id: NumericIdentity) -> Option<&'static str> {
    RESERVED.iter().find(|(i, _)| *i == id).map(|(_, n)| *n)
}

pub fn reserved_by_name(name: &str) -> Option<NumericIdentity> {
    RESERVED.iter().find(|(_, n)| *n == name).map(|(i, _)| *i)
}

/// What an identity stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum IdentityKind {
    Reserved,
    Endpoint,
    /// A CIDR prefix outside the cluster.
    Cidr(Cidr),
    /// Addresses learned from DNS answers for these names.
    Fqdn {
        names: Vec<String>,
        prefix: Cidr,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub id: NumericIdentity,
    pub labels: LabelSet,
    pub kind: IdentityKind,
}

impl Identity {
    /// The prefix of a CIDR or FQDN identity.
    pub fn prefix(&self) -> Option<&Cidr> {
        match &self.kind {
            IdentityKind::Cidr(c) => Some(c),
            IdentityKind::Fqdn { prefix, .. } => Some(prefix),
            _ => None,
        }
    }
}

/// The labels of a pod's identity, as Cilium derives them.
pub fn pod_labels(
    namespace: &str,
    pod_labels: &BTreeMap<String, String>,
    service_account: &str,
    namespace_labels: &BTreeMap<String, String>,
) -> LabelSet {
    let mut labels: Vec<Label> = pod_labels
        .iter()
        .map(|(k, v)| Label::new(SOURCE_K8S, k, v))
        .collect();
    labels.push(Label::new(SOURCE_K8S, POD_NAMESPACE, namespace));
    labels.push(Label::new(SOURCE_K8S, SERVICE_ACCOUNT, service_account));
    labels.push(Label::new(SOURCE_K8S, CLUSTER, DEFAULT_CLUSTER));
    for (k, v) in namespace_labels {
        labels.push(Label::new(
            SOURCE_K8S,
            &format!("{NAMESPACE_LABELS_PREFIX}{k}"),
            v,
        ));
    }
    LabelSet::new(labels)
}

/// Allocates and holds identities. Cluster identities are derived from a
/// hash of the label set (probing on collision), so the same labels get the
/// same number whatever order they are seen in.
#[derive(Clone, Debug, Default)]
pub struct IdentityAllocator {
    by_labels: HashMap<LabelSet, NumericIdentity>,
    identities: BTreeMap<NumericIdentity, Identity>,
    refcount: HashMap<NumericIdentity, usize>,
    next_local: NumericIdentity,
}

fn fnv1a(labels: &LabelSet) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for l in labels.iter() {
        for b in l
            .source
            .bytes()
            .chain([b':'])
            .chain(l.key.bytes())
            .chain([b'='])
            .chain(l.value.bytes())
            .chain([0])
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

impl IdentityAllocator {
    pub fn new() -> Self {
        let mut a = IdentityAllocator {
            next_local: LOCAL_FLAG | 1,
            ..Default::default()
        };
        for (id, name) in RESERVED {
            let labels = LabelSet::new(vec![Label::reserved(name)]);
            a.insert(Identity {
                id: *id,
                labels,
                kind: IdentityKind::Reserved,
            });
        }
        a
    }

    fn insert(&mut self, identity: Identity) {
        self.by_labels.insert(identity.labels.clone(), identity.id);
        self.identities.insert(identity.id, identity);
    }

    pub fn get(&self, id: NumericIdentity) -> Option<&Identity> {
        self.identities.get(&id)
    }

    pub fn lookup(&self, labels: &LabelSet) -> Option<NumericIdentity> {
        self.by_labels.get(labels).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Identity> {
        self.identities.values()
    }

    pub fn len(&self) -> usize {
        self.identities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// Allocates (or references again) the cluster identity of a label set.
    /// Returns the id and whether it is new.
    pub fn allocate_endpoint(&mut self, labels: LabelSet) -> (NumericIdentity, bool) {
        if let Some(id) = self.lookup(&labels) {
            *self.refcount.entry(id).or_default() += 1;
            return (id, false);
        }
        let span = u64::from(CLUSTER_MAX - CLUSTER_MIN + 1);
        let start = fnv1a(&labels) % span;
        let mut id = CLUSTER_MIN;
        for probe in 0..span {
            let cand = CLUSTER_MIN + ((start + probe) % span) as NumericIdentity;
            if !self.identities.contains_key(&cand) {
                id = cand;
                break;
            }
        }
        self.insert(Identity {
            id,
            labels,
            kind: IdentityKind::Endpoint,
        });
        self.refcount.insert(id, 1);
        (id, true)
    }

    /// Drops one reference; returns true when the identity is gone.
    pub fn release(&mut self, id: NumericIdentity) -> bool {
        let Some(c) = self.refcount.get_mut(&id) else {
            return false;
        };
        *c -= 1;
        if *c > 0 {
            return false;
        }
        self.refcount.remove(&id);
        if let Some(identity) = self.identities.remove(&id) {
            self.by_labels.remove(&identity.labels);
        }
        true
    }

    /// The node-local identity of a CIDR prefix (`cidr:` label plus world;
    /// a /0 is world itself).
    pub fn allocate_cidr(&mut self, cidr: Cidr) -> (NumericIdentity, bool) {
        if cidr.len == 0 {
            return (WORLD, false);
        }
        let labels = LabelSet::new(vec![
            Label::new(SOURCE_CIDR, &cidr_label(&cidr), ""),
            Label::reserved("world"),
        ]);
        self.allocate_local(labels, IdentityKind::Cidr(cidr))
    }

    /// The node-local identity of an address learned for DNS names.
    pub fn allocate_fqdn(&mut self, names: Vec<String>, prefix: Cidr) -> (NumericIdentity, bool) {
        let mut labels: Vec<Label> = names
            .iter()
            .map(|n| Label::new(SOURCE_FQDN, n, ""))
            .collect();
        labels.push(Label::new(SOURCE_CIDR, &cidr_label(&prefix), ""));
        labels.push(Label::reserved("world"));
        self.allocate_local(LabelSet::new(labels), IdentityKind::Fqdn { names, prefix })
    }

    fn allocate_local(&mut self, labels: LabelSet, kind: IdentityKind) -> (NumericIdentity, bool) {
        if let Some(id) = self.lookup(&labels) {
            return (id, false);
        }
        let id = self.next_local;
        self.next_local += 1;
        self.insert(Identity { id, labels, kind });
        (id, true)
    }

    /// Removes a node-local identity.
    pub fn remove_local(&mut self, id: NumericIdentity) -> bool {
        if id & LOCAL_FLAG == 0 {
            return false;
        }
        match self.identities.remove(&id) {
            Some(identity) => {
                self.by_labels.remove(&identity.labels);
                true
            }
            None => false,
        }
    }
}

/// Cilium writes IPv6 prefixes in labels with `-` for `:`.
pub fn cidr_label(c: &Cidr) -> String {
    c.to_string().replace(':', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_deterministic_and_refcounted() {
        let l1 = LabelSet::new(vec![Label::new("k8s", "app", "a")]);
        let l2 = LabelSet::new(vec![Label::new("k8s", "app", "b")]);
        let mut a = IdentityAllocator::new();
        let (i1, _) = a.allocate_endpoint(l1.clone());
        let (i2, _) = a.allocate_endpoint(l2.clone());
        let mut b = IdentityAllocator::new();
        let (j2, _) = b.allocate_endpoint(l2);
        let (j1, _) = b.allocate_endpoint(l1.clone());
        assert_eq!((i1, i2), (j1, j2));
        assert!((CLUSTER_MIN..=CLUSTER_MAX).contains(&i1));
        let (again, new) = a.allocate_endpoint(l1);
        assert_eq!((again, new), (i1, false));
        assert!(!a.release(i1));
        assert!(a.release(i1));
        assert!(a.get(i1).is_none());
    }
}
