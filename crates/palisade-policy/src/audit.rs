//! Audit mode and impact replay: safe rollout.
//!
//! A policy is audited when it carries the annotation
//! `palisade.io/audit: "true"`, or when it is namespaced and its namespace
//! has the label `palisade.io/audit=true`. Audited policies are resolved
//! like any other, but the denials they would cause are reported as AUDIT
//! and not enforced: the enforced view is the policy set without them.

use crate::api::{Policy, PolicyId};
use crate::cluster::Namespace;
use crate::engine::Engine;
use crate::manifest::Object;
use crate::trace::{Query, TraceResult, trace};
use serde::Serialize;
use std::collections::BTreeMap;

/// The annotation (on a policy) and label (on a namespace) that turn audit on.
pub const AUDIT_KEY: &str = "palisade.io/audit";

fn is_true(v: Option<&String>) -> bool {
    v.is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Whether a policy is in audit mode, given the namespaces.
pub fn is_audited(p: &Policy, namespaces: &BTreeMap<String, Namespace>) -> bool {
    is_true(p.annotations.get(AUDIT_KEY))
        || (p.id.kind.is_namespaced()
            && p.id
                .namespace
                .as_ref()
                .and_then(|ns| namespaces.get(ns))
                .is_some_and(|ns| is_true(ns.labels.get(AUDIT_KEY))))
}

/// Two views of one policy set: everything, and what is enforced.
#[derive(Clone, Debug)]
pub struct AuditedEngines {
    /// Every policy: what the policies say.
    pub full: Engine,
    /// Without audited policies: what the datapath enforces.
    pub enforced: Engine,
    pub audited: Vec<PolicyId>,
}

/// The policies of `objects` that are in audit mode (namespace labels are
/// read from the `Namespace` objects among them).
pub fn audited_policies(objects: &[Object]) -> Vec<PolicyId> {
    let namespaces: BTreeMap<String, Namespace> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Namespace(n) => Some((n.name.clone(), n.clone())),
            _ => None,
        })
        .collect();
    objects
        .iter()
        .filter_map(|o| match o {
            Object::Policy(p) if is_audited(p, &namespaces) => Some(p.id.clone()),
            _ => None,
        })
        .collect()
}

/// `objects` without the `audited` policies: what the datapath and the
/// proxies enforce.
pub fn enforced_objects(objects: &[Object], audited: &[PolicyId]) -> Vec<Object> {
    objects
        .iter()
        .filter(|o| !matches!(o, Object::Policy(p) if audited.contains(&p.id)))
        .cloned()
        .collect()
}

impl AuditedEngines {
    pub fn from_objects(objects: Vec<Object>) -> Self {
        let audited = audited_policies(&objects);
        let enforced_objects = enforced_objects(&objects, &audited);
        let full = Engine::from_objects(objects);
        let enforced = if audited.is_empty() {
            full.clone()
        } else {
            Engine::from_objects(enforced_objects)
        };
        AuditedEngines {
            full,
            enforced,
            audited,
        }
    }
}

/// A verdict with audit mode applied.
#[derive(Clone, Debug, Serialize)]
pub struct AuditedVerdict {
    /// What the policies say (audited policies included).
    pub result: TraceResult,
    /// Whether the traffic is delivered (audited denials are not enforced).
    pub delivered: bool,
    /// True when the policies deny but only audited policies cause it.
    pub audit: bool,
}

/// Traces a query in both views.
pub fn trace_audited(e: &AuditedEngines, q: &Query) -> Result<AuditedVerdict, String> {
    let result = trace(&e.full, q)?;
    if result.allowed || e.audited.is_empty() {
        return Ok(AuditedVerdict {
            delivered: result.allowed,
            audit: false,
            result,
        });
    }
    let enforced = trace(&e.enforced, q)?;
    Ok(AuditedVerdict {
        delivered: enforced.allowed,
        audit: enforced.allowed,
        result,
    })
}
