//! Label selectors: matchLabels and matchExpressions over label sets.

use crate::labels::{LabelKey, LabelSet};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Operator {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            _ => return None,
        })
    }
}

/// One requirement on a label key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Requirement {
    pub key: LabelKey,
    pub op: Operator,
    pub values: BTreeSet<String>,
}

impl Requirement {
    pub fn equals(key: LabelKey, value: &str) -> Self {
        Requirement {
            key,
            op: Operator::In,
            values: [value.to_string()].into(),
        }
    }
    pub fn exists(key: LabelKey) -> Self {
        Requirement {
            key,
            op: Operator::Exists,
            values: BTreeSet::new(),
        }
    }

    pub fn matches(&self, labels: &LabelSet) -> bool {
        match self.op {
            Operator::In => labels.values(&self.key).any(|v| self.values.contains(v)),
            Operator::NotIn => !labels.values(&self.key).any(|v| self.values.contains(v)),
            Operator::Exists => labels.values(&self.key).next().is_some(),
            Operator::DoesNotExist => labels.values(&self.key).next().is_none(),
        }
    }
}

/// A conjunction of requirements; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    pub fn new(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort();
        requirements.dedup();
        Selector { requirements }
    }

    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether any requirement names this key (any source counts).
    pub fn mentions_key(&self, key: &str) -> bool {
        self.requirements.iter().any(|r| r.key.key == key)
    }

    pub fn with(mut self, r: Requirement) -> Self {
        self.requirements.push(r);
        Selector::new(self.requirements)
    }

    /// An equality requirement usable as an index key (`k8s:app=web`).
    pub fn index_key(&self) -> Option<(&LabelKey, &str)> {
        self.requirements
            .iter()
            .find(|r| r.op == Operator::In && r.values.len() == 1 && r.key.source != "any")
            .and_then(|r| r.values.iter().next().map(|v| (&r.key, v.as_str())))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r.op {
                Operator::In if r.values.len() == 1 => {
                    format!("{}={}", r.key, r.values.iter().next().map_or("", |v| v))
                }
                Operator::In => format!(
                    "{} in ({})",
                    r.key,
                    r.values.iter().cloned().collect::<Vec<_>>().join(",")
                ),
                Operator::NotIn => format!(
                    "{} notin ({})",
                    r.key,
                    r.values.iter().cloned().collect::<Vec<_>>().join(",")
                ),
                Operator::Exists => r.key.to_string(),
                Operator::DoesNotExist => format!("!{}", r.key),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Label;

    #[test]
    fn any_source_matches_k8s() {
        let labels = LabelSet::new(vec![Label::new("k8s", "app", "web")]);
        let sel = Selector::new(vec![Requirement::equals(
            LabelKey::parse("app", "any"),
            "web",
        )]);
        assert!(sel.matches(&labels));
        let sel = Selector::new(vec![Requirement::equals(
            LabelKey::parse("reserved:app", "any"),
            "web",
        )]);
        assert!(!sel.matches(&labels));
    }
}
