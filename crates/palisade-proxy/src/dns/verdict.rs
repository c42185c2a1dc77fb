//! The per-message decision of the DNS and Kafka proxies, taken with one
//! policy snapshot: the same `PolicyMap::lookup` the datapath runs for the
//! egress of the source endpoint and the ingress of the destination
//! endpoint, then `trace::l7_verdict` (the matcher `palisade policy trace`
//! uses) for every direction that redirects to this parser.

use crate::snapshot::PolicySnapshot;
use palisade_policy::api::{Direction, L7Kind};
use palisade_policy::identity::NumericIdentity;
use palisade_policy::l7::L7Request;
use palisade_policy::mapstate::{RuleRef, Verdict};
use palisade_policy::trace::l7_verdict;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// IP protocol numbers.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// What to do with one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send it to the destination.
    Forward,
    /// Denied by an L7 rule: answer it at the application layer (DNS
    /// REFUSED, Kafka authorization error).
    Deny,
    /// Denied at L3/L4 (or redirected to another parser): drop it, as the
    /// datapath would.
    Drop,
}

/// The decision and its explanation.
#[derive(Clone, Debug)]
pub struct Decision {
    pub action: Action,
    /// The allowing rules, or the rules considered when denied.
    pub rules: Vec<RuleRef>,
    /// The endpoint whose policy decided.
    pub endpoint: Option<String>,
    pub direction: Option<Direction>,
    pub explanation: String,
    pub source_identity: NumericIdentity,
    pub destination_identity: NumericIdentity,
    pub source_endpoint: Option<String>,
    pub destination_endpoint: Option<String>,
    pub revision: u64,
}

/// Identity of `ip` as the endpoint `viewer` sees it.
pub fn identity_of(snap: &PolicySnapshot, ip: IpAddr, viewer: Option<&str>) -> NumericIdentity {
    let engine = snap.engine();
    if let Some(id) = snap
        .endpoint_of(ip)
        .and_then(|k| engine.endpoint_identity(k))
    {
        return id;
    }
    let node = viewer
        .and_then(|k| engine.state().pod(k))
        .and_then(|p| p.node_name.as_deref());
    engine.identity_of_ip(ip, node)
}

/// The labels of an identity, for records.
pub fn labels_of(snap: &PolicySnapshot, id: NumericIdentity) -> Arc<[String]> {
    match snap.engine().identities().get(id) {
        Some(i) => i.labels.iter().map(|l| l.to_string()).collect(),
        None => Arc::from(Vec::new()),
    }
}

/// Decides one `kind` message from `src` to `dst` over `proto`.
pub fn decide(
    snap: &PolicySnapshot,
    src: SocketAddr,
    dst: SocketAddr,
    proto: u8,
    kind: L7Kind,
    req: &L7Request,
) -> Decision {
    let src_ep = snap.endpoint_of(src.ip()).map(str::to_string);
    let dst_ep = snap.endpoint_of(dst.ip()).map(str::to_string);
    let src_id = identity_of(snap, src.ip(), dst_ep.as_deref().or(src_ep.as_deref()));
    let dst_id = identity_of(snap, dst.ip(), src_ep.as_deref());
    let mut out = Decision {
        action: Action::Forward,
        rules: Vec::new(),
        endpoint: None,
        direction: None,
        explanation: String::new(),
        source_identity: src_id,
        destination_identity: dst_id,
        source_endpoint: src_ep.clone(),
        destination_endpoint: dst_ep.clone(),
        revision: snap.revision(),
    };
    let port = dst.port();
    let mut explanations = Vec::new();
    for (ep, dir, remote) in [
        (&src_ep, Direction::Egress, dst_id),
        (&dst_ep, Direction::Ingress, src_id),
    ] {
        let Some(ep) = ep else { continue };
        let Some(map) = snap.engine().endpoint_map(ep) else {
            continue;
        };
        let d = map.lookup(remote, dir, proto, port);
        let entry_rules: Vec<RuleRef> = d
            .entry
            .map(|e| e.derived_from.into_iter().collect())
            .unwrap_or_default();
        let proto_name = if proto == PROTO_UDP { "UDP" } else { "TCP" };
        match d.verdict {
            None | Some(Verdict::Deny) => {
                out.action = Action::Drop;
                out.rules = entry_rules;
                out.endpoint = Some(ep.clone());
                out.direction = Some(dir);
                out.explanation = format!(
                    "{} of {ep} denies identity {remote} on {port}/{proto_name}{}",
                    dir.as_str(),
                    if d.verdict.is_none() {
                        " (default deny)"
                    } else {
                        ""
                    }
                );
                return out;
            }
            Some(Verdict::Allow) => {
                out.rules.extend(entry_rules);
            }
            Some(Verdict::Redirect(k)) if k == kind => {
                let Some(v) = l7_verdict(map, remote, dir, proto, port, kind, req) else {
                    continue;
                };
                if out.endpoint.is_none() || !v.allowed {
                    out.endpoint = Some(ep.clone());
                    out.direction = Some(dir);
                }
                if !v.allowed {
                    out.action = Action::Deny;
                    out.rules = v.rules;
                    out.explanation = v.explanation;
                    return out;
                }
                out.rules.extend(v.rules);
                explanations.push(v.explanation);
            }
            Some(Verdict::Redirect(other)) => {
                out.action = Action::Drop;
                out.endpoint = Some(ep.clone());
                out.direction = Some(dir);
                out.rules = entry_rules;
                out.explanation = format!(
                    "{} of {ep} redirects {port}/{proto_name} to the {} parser, not {}",
                    dir.as_str(),
                    other.as_str(),
                    kind.as_str()
                );
                return out;
            }
        }
    }
    out.rules.sort();
    out.rules.dedup();
    out.explanation = if explanations.is_empty() {
        "allowed at L3/L4 with no L7 rule".into()
    } else {
        explanations.join("; ")
    };
    out
}
