//! Labels with sources (`k8s:app=web`, `reserved:host`, `any:org`), as
//! Cilium writes them, and sorted label sets.

use serde::Serialize;
use std::fmt;

/// Source of labels coming from Kubernetes objects.
pub const SOURCE_K8S: &str = "k8s";
/// Source of the reserved labels (`reserved:host`, `reserved:world`, ...).
pub const SOURCE_RESERVED: &str = "reserved";
/// Selector source that matches a key of any source.
pub const SOURCE_ANY: &str = "any";
pub const SOURCE_CIDR: &str = "cidr";
pub const SOURCE_FQDN: &str = "fqdn";

pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const SERVICE_ACCOUNT: &str = "io.cilium.k8s.policy.serviceaccount";
pub const CLUSTER: &str = "io.cilium.k8s.policy.cluster";
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// The cluster name Palisade's single cluster carries.
pub const DEFAULT_CLUSTER: &str = "default";

/// The sources a label key may start with.
pub const KNOWN_SOURCES: &[&str] = &[
    "k8s",
    "container",
    "reserved",
    "cidr",
    "cidrgroup",
    "node",
    "fqdn",
    "unspec",
    "any",
];

/// A label key with its source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct LabelKey {
    pub source: String,
    pub key: String,
}

impl LabelKey {
    pub fn new(source: &str, key: &str) -> Self {
        LabelKey {
            source: source.to_string(),
            key: key.to_string(),
        }
    }

    /// Reads `source:key` or a bare `key`, which means `any:key` in
    /// selectors and `default_source:key` elsewhere.
    pub fn parse(text: &str, default_source: &str) -> Self {
        if let Some((src, key)) = text.split_once(':')
            && KNOWN_SOURCES.contains(&src)
        {
            return LabelKey::new(src, key);
        }
        LabelKey::new(default_source, text)
    }
}

impl fmt::Display for LabelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.key)
    }
}

/// One label.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Label {
    pub source: String,
    pub key: String,
    pub value: String,
}

impl Label {
    pub fn new(source: &str, key: &str, value: &str) -> Self {
        Label {
            source: source.to_string(),
            key: key.to_string(),
            value: value.to_string(),
        }
    }
    pub fn reserved(name: &str) -> Self {
        Label::new(SOURCE_RESERVED, name, "")
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.source, self.key)
        } else {
            write!(f, "{}:{}={}", self.source, self.key, self.value)
        }
    }
}

/// A sorted, duplicate-free set of labels: the whole of an identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct LabelSet(Vec<Label>);

impl LabelSet {
    pub fn new(mut labels: Vec<Label>) -> Self {
        labels.sort();
        labels.dedup_by(|a, b| a.source == b.source && a.key == b.key);
        LabelSet(labels)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of a key; `any` matches every source.
    pub fn get(&self, key: &LabelKey) -> Option<&str> {
        self.0
            .iter()
            .find(|l| l.key == key.key && (key.source == SOURCE_ANY || l.source == key.source))
            .map(|l| l.value.as_str())
    }

    /// All values of a key across sources (for `any:` keys).
    pub fn values<'a>(&'a self, key: &'a LabelKey) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |l| {
                l.key == key.key && (key.source == SOURCE_ANY || l.source == key.source)
            })
            .map(|l| l.value.as_str())
    }

    pub fn has_reserved(&self, name: &str) -> bool {
        self.0
            .iter()
            .any(|l| l.source == SOURCE_RESERVED && l.key == name)
    }

    pub fn namespace(&self) -> Option<&str> {
        self.get(&LabelKey::new(SOURCE_K8S, POD_NAMESPACE))
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|l| l.to_string()).collect();
        f.write_str(&parts.join(" "))
    }
}
