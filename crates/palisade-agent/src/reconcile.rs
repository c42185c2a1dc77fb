//! Desired state (from the engine) reconciled to the datapath, idempotently
//! and by deltas: ipcache entries, endpoint entries and per-endpoint policy
//! entries. Programs are never reloaded. Order avoids transient denials of
//! allowed traffic: new ipcache entries and policy first, removals last.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use palisade_datapath::ipcache::Ipv4Prefix;
use palisade_datapath::{
    Datapath, DatapathError, Direction as DpDirection, EndpointInfo, PolicyKey, PolicyValue,
};
use palisade_policy::api::Direction;
use palisade_policy::engine::Engine;
use palisade_policy::identity;
use palisade_policy::mapstate::{Key, PolicyMap, RuleRef, Verdict};

/// A local endpoint as the runtime knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRuntime {
    /// `NAMESPACE/POD`.
    pub key: String,
    /// Endpoint id.
    pub ep_id: u32,
    /// Host-side veth ifindex in the node namespace.
    pub ifindex: u32,
}

/// The health of one endpoint after a reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointStatus {
    /// Its policy is in the kernel.
    Ready,
    /// The engine has no identity/policy for it (yet).
    NotReady(String),
    /// Writing its policy failed; it keeps its last good entries.
    Error(String),
}

impl std::fmt::Display for EndpointStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointStatus::Ready => f.write_str("ready"),
            EndpointStatus::NotReady(m) => write!(f, "not-ready: {m}"),
            EndpointStatus::Error(m) => write!(f, "error: {m}"),
        }
    }
}

/// What a reconciliation did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Per endpoint key.
    pub status: BTreeMap<String, EndpointStatus>,
    /// ipcache entries written or removed.
    pub ipcache_changes: usize,
    /// Errors that are not endpoint-specific.
    pub errors: Vec<String>,
}

/// Converts an engine direction.
pub fn dp_direction(d: Direction) -> DpDirection {
    match d {
        Direction::Ingress => DpDirection::Ingress,
        Direction::Egress => DpDirection::Egress,
    }
}

/// Converts a datapath direction.
pub fn engine_direction(d: DpDirection) -> Direction {
    match d {
        DpDirection::Ingress => Direction::Ingress,
        DpDirection::Egress => Direction::Egress,
    }
}

/// The datapath key of an engine key.
pub fn policy_key(ep_id: u32, k: &Key) -> PolicyKey {
    PolicyKey {
        ep_id,
        identity: k.identity,
        direction: dp_direction(k.direction),
        protocol: k.proto,
        port: k.port,
        prefix: k.prefix_len,
    }
}

/// The engine key of a datapath key.
pub fn engine_key(k: &PolicyKey) -> Key {
    Key {
        identity: k.identity,
        direction: engine_direction(k.direction),
        proto: k.protocol,
        port: k.port,
        prefix_len: k.prefix,
    }
}

/// The datapath entries of one endpoint's resolved map (cookie = the
/// entry's first rule).
pub fn desired_policy(ep_id: u32, map: &PolicyMap) -> Vec<(PolicyKey, PolicyValue)> {
    map.entries
        .iter()
        .map(|(k, e)| {
            (
                policy_key(ep_id, k),
                PolicyValue {
                    // L7 redirects pass at L3/L4 until the proxy is attached.
                    proxy_port: 0,
                    deny: e.verdict == Verdict::Deny,
                    precedence: e.precedence,
                    cookie: e.cookie(),
                },
            )
        })
        .collect()
}

/// The datapath ipcache: the engine's IPv4 prefixes plus every node's
/// addresses (`host` for this node, `remote-node` for the others), which
/// the engine resolves before its ipcache.
pub fn desired_ipcache(engine: &Engine, local_node: &str) -> BTreeMap<Ipv4Prefix, u32> {
    let mut want = BTreeMap::new();
    for (cidr, id) in engine.ipcache().iter() {
        if let IpAddr::V4(a) = cidr.addr
            && let Ok(p) = Ipv4Prefix::new(a, cidr.len)
        {
            want.insert(p, *id);
        }
    }
    for node in engine.state().nodes.values() {
        let id = if node.name == local_node {
            identity::HOST
        } else {
            identity::REMOTE_NODE
        };
        for a in &node.addresses {
            if let IpAddr::V4(a) = a {
                want.insert(Ipv4Prefix::host(*a), id);
            }
        }
    }
    want
}

/// Every cookie of every endpoint map, and the rule it names.
pub fn cookie_table(engine: &Engine) -> BTreeMap<u32, RuleRef> {
    let mut t = BTreeMap::new();
    for (_, _, map) in engine.endpoints() {
        t.extend(map.cookies());
    }
    t
}

/// Writes one endpoint's policy, then its endpoint entry (if it changed).
fn sync_endpoint(
    engine: &Engine,
    dp: &mut Datapath,
    ep: &EndpointRuntime,
    current: Option<&EndpointInfo>,
) -> EndpointStatus {
    let (Some(id), Some(map)) = (
        engine.endpoint_identity(&ep.key),
        engine.endpoint_map(&ep.key),
    ) else {
        return EndpointStatus::NotReady(
            "not an endpoint of this node in the cluster state".into(),
        );
    };
    let desired = desired_policy(ep.ep_id, map);
    // Policy before the endpoint entry: a new identity never runs
    // against an empty map.
    let status = match dp.policy_sync(ep.ep_id, &desired) {
        Ok(()) => EndpointStatus::Ready,
        Err(e @ DatapathError::PolicyCapacity { .. }) => {
            tracing::error!(endpoint = %ep.key, error = %e, "policy map overflow; endpoint keeps its last good policy");
            EndpointStatus::Error(format!("policy map overflow: {e}"))
        }
        Err(e) => {
            tracing::error!(endpoint = %ep.key, error = %e, "writing policy failed");
            EndpointStatus::Error(e.to_string())
        }
    };
    let info = EndpointInfo {
        ep_id: ep.ep_id,
        identity: id,
        // The resolved map always holds an allow-all entry for a
        // direction without default deny, so the kernel can enforce
        // both directions and compute exactly `PolicyMap::lookup`.
        enforce_ingress: true,
        enforce_egress: true,
    };
    if current != Some(&info)
        && let Err(e) = dp.set_endpoint(ep.ifindex, info)
    {
        return EndpointStatus::Error(e.to_string());
    }
    status
}

/// Reconciles only what an incremental engine change touched: the ipcache
/// entries of `prefixes` (written from the engine's ipcache, removed when
/// it has none) and the endpoints whose maps changed. Endpoints and
/// ipcache entries outside these sets are left alone; no stale-endpoint
/// sweep (the full [`reconcile`] does that).
pub fn reconcile_endpoints(
    engine: &Engine,
    dp: &mut Datapath,
    endpoints: &[EndpointRuntime],
    prefixes: &[Ipv4Prefix],
) -> Outcome {
    let mut out = Outcome::default();
    let mut removals = Vec::new();
    for p in prefixes {
        let (id, hit) = engine.ipcache().lookup(IpAddr::V4(p.addr()));
        let exact = hit.is_some_and(|c| c.addr == IpAddr::V4(p.addr()) && c.len == p.len());
        if exact {
            match dp.ipcache_upsert(*p, id) {
                Ok(()) => out.ipcache_changes += 1,
                Err(e) => out.errors.push(format!("ipcache {p} -> {id}: {e}")),
            }
        } else {
            removals.push(*p);
        }
    }
    let current: BTreeMap<u32, EndpointInfo> =
        dp.endpoints().unwrap_or_default().into_iter().collect();
    for ep in endpoints {
        let status = sync_endpoint(engine, dp, ep, current.get(&ep.ifindex));
        out.status.insert(ep.key.clone(), status);
    }
    for p in removals {
        match dp.ipcache_remove(p) {
            Ok(()) => out.ipcache_changes += 1,
            Err(e) => out.errors.push(format!("ipcache remove {p}: {e}")),
        }
    }
    out
}

/// Reconciles the datapath to the engine for `endpoints`. Idempotent.
pub fn reconcile(
    engine: &Engine,
    dp: &mut Datapath,
    endpoints: &[EndpointRuntime],
    local_node: &str,
) -> Outcome {
    let mut out = Outcome::default();
    // 1. ipcache additions and changes.
    let want = desired_ipcache(engine, local_node);
    let have: BTreeMap<Ipv4Prefix, u32> = match dp.ipcache_entries() {
        Ok(v) => v.into_iter().collect(),
        Err(e) => {
            out.errors.push(format!("reading the ipcache: {e}"));
            BTreeMap::new()
        }
    };
    for (p, id) in &want {
        if have.get(p) != Some(id) {
            match dp.ipcache_upsert(*p, *id) {
                Ok(()) => out.ipcache_changes += 1,
                Err(e) => out.errors.push(format!("ipcache {p} -> {id}: {e}")),
            }
        }
    }
    // 2. endpoints and their policy.
    let ours: BTreeSet<u32> = endpoints.iter().map(|e| e.ifindex).collect();
    let current: BTreeMap<u32, EndpointInfo> =
        dp.endpoints().unwrap_or_default().into_iter().collect();
    for ep in endpoints {
        let status = sync_endpoint(engine, dp, ep, current.get(&ep.ifindex));
        out.status.insert(ep.key.clone(), status);
    }
    // 3. endpoints the datapath has but we do not run any more.
    for (ifindex, info) in &current {
        if !ours.contains(ifindex) {
            tracing::info!(ifindex, ep_id = info.ep_id, "removing stale endpoint");
            let _ = dp.remove_endpoint(*ifindex);
            let _ = dp.policy_sync(info.ep_id, &[]);
            let _ = dp.detach(*ifindex);
        }
    }
    // 4. ipcache removals last.
    for p in have.keys() {
        if !want.contains_key(p) {
            match dp.ipcache_remove(*p) {
                Ok(()) => out.ipcache_changes += 1,
                Err(e) => out.errors.push(format!("ipcache remove {p}: {e}")),
            }
        }
    }
    out
}
