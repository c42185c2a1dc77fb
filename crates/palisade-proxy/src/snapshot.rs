//! One immutable policy snapshot and the decisions the proxy takes with
//! it: per connection (the same `PolicyMap::lookup` the datapath runs, for
//! the egress of the source endpoint and the ingress of the destination
//! endpoint) and per request (`trace::l7_verdict`, the one L7 matcher that
//! `palisade policy trace` also uses).
//!
//! The proxy keeps the current snapshot behind an `ArcSwap` and loads it
//! per request, so a policy update applies to existing connections from
//! their next request on.

use palisade_policy::api::{Direction, L7Kind, L7Rules};
use palisade_policy::engine::Engine;
use palisade_policy::identity::NumericIdentity;
use palisade_policy::l7::{HttpRequest, HttpRule, L7Request, MismatchAction};
use palisade_policy::mapstate::{L7Part, RuleRef, Verdict};
use palisade_policy::trace::l7_verdict;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// IP protocol number of TCP.
pub const TCP: u8 = 6;

/// A resolved policy plus the indexes the proxy needs.
#[derive(Debug)]
pub struct PolicySnapshot {
    revision: u64,
    engine: Engine,
    /// Local endpoint addresses → pod key.
    endpoints_by_ip: HashMap<IpAddr, String>,
}

/// One side of a connection as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub identity: NumericIdentity,
    /// `k8s:app=frontend`, ...
    pub labels: Arc<[String]>,
    /// The pod key when this side is a local endpoint.
    pub endpoint: Option<String>,
}

/// One direction the proxy must enforce for a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The endpoint whose policy applies.
    pub endpoint: String,
    pub direction: Direction,
    /// The peer's identity as this endpoint sees it.
    pub remote_identity: NumericIdentity,
    /// `None`: no entry (default deny).
    pub verdict: Option<Verdict>,
    /// The rules of the deciding entry.
    pub rules: Vec<RuleRef>,
}

/// What to do with a whole connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnVerdict {
    /// Denied at L3/L4 by `checks[index]`: close the connection.
    Deny(usize),
    /// Allowed at L3/L4 with no L7 rule: forward bytes.
    Forward,
    /// At least one direction redirects to the HTTP parser.
    Http,
    /// Redirected to a parser this proxy does not have (fail closed).
    Unsupported(L7Kind),
}

/// The connection-level decision, computed with one snapshot.
#[derive(Clone, Debug)]
pub struct ConnPlan {
    pub revision: u64,
    pub source: PeerInfo,
    pub destination: PeerInfo,
    pub checks: Vec<Check>,
    pub verdict: ConnVerdict,
}

/// A header change a `headerMatches` mismatch action asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderRewrite {
    /// Only log the mismatch.
    Log { name: String },
    /// Append `name: value`.
    Add { name: String, value: String },
    /// Remove every `name` header.
    Delete { name: String },
    /// Replace every `name` header with one `name: value`.
    Replace { name: String, value: String },
}

/// The verdict for one request.
#[derive(Clone, Debug)]
pub struct RequestVerdict {
    pub allowed: bool,
    /// The allowing rules, or the rules considered when denied.
    pub rules: Vec<RuleRef>,
    /// The check that decided (the denying one, else the first L7 one).
    pub endpoint: Option<String>,
    pub direction: Option<Direction>,
    pub explanation: String,
    /// Header rewrites to apply before forwarding (allowed requests only).
    pub rewrites: Vec<HeaderRewrite>,
    /// Whether an allowing rule admits protocol upgrades (an L7 allow-all,
    /// or a matching rule that names the `Upgrade` header).
    pub upgrade_allowed: bool,
}

impl PolicySnapshot {
    /// Wraps an engine (normally built by [`crate::feed::PolicyFeed::build`]).
    /// Every HTTP rule list's matcher is compiled here, once per snapshot,
    /// so that no request pays for it.
    pub fn new(engine: Engine, revision: u64) -> Self {
        let mut endpoints_by_ip = HashMap::new();
        for (key, _, map) in engine.endpoints() {
            if let Some(pod) = engine.state().pod(key) {
                for ip in &pod.ips {
                    endpoints_by_ip.insert(*ip, key.clone());
                }
            }
            for c in map.contributions.values().flatten() {
                if let L7Part::Rules(rules) = &c.l7
                    && let L7Rules::Http(rs) = rules.as_ref()
                {
                    rs.prepare();
                }
            }
        }
        PolicySnapshot {
            revision,
            engine,
            endpoints_by_ip,
        }
    }

    /// An empty policy (nothing is an endpoint: everything is forwarded).
    pub fn empty() -> Self {
        PolicySnapshot::new(Engine::new(), 0)
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The local endpoint that owns `ip`.
    pub fn endpoint_of(&self, ip: IpAddr) -> Option<&str> {
        self.endpoints_by_ip.get(&ip).map(String::as_str)
    }

    fn node_of(&self, endpoint: Option<&str>) -> Option<&str> {
        endpoint
            .and_then(|k| self.engine.state().pod(k))
            .and_then(|p| p.node_name.as_deref())
    }

    fn identity(
        &self,
        ip: IpAddr,
        endpoint: Option<&str>,
        viewer: Option<&str>,
    ) -> NumericIdentity {
        if let Some(id) = endpoint.and_then(|k| self.engine.endpoint_identity(k)) {
            return id;
        }
        self.engine.identity_of_ip(ip, self.node_of(viewer))
    }

    fn labels(&self, id: NumericIdentity) -> Arc<[String]> {
        match self.engine.identities().get(id) {
            Some(i) => i.labels.iter().map(|l| l.to_string()).collect(),
            None => Arc::from(Vec::new()),
        }
    }

    /// Decides a TCP connection from `src` to `dst` (the original
    /// destination): the egress of the source endpoint and the ingress of
    /// the destination endpoint, each with `PolicyMap::lookup`.
    pub fn plan(&self, src: SocketAddr, dst: SocketAddr) -> ConnPlan {
        let src_ep = self.endpoint_of(src.ip()).map(str::to_string);
        let dst_ep = self.endpoint_of(dst.ip()).map(str::to_string);
        let src_id = self.identity(src.ip(), src_ep.as_deref(), dst_ep.as_deref());
        let dst_id = self.identity(dst.ip(), dst_ep.as_deref(), src_ep.as_deref());
        let mut checks = Vec::new();
        let port = dst.port();
        for (ep, dir, remote) in [
            (&src_ep, Direction::Egress, dst_id),
            (&dst_ep, Direction::Ingress, src_id),
        ] {
            let Some(ep) = ep else { continue };
            let Some(map) = self.engine.endpoint_map(ep) else {
                continue;
            };
            let d = map.lookup(remote, dir, TCP, port);
            checks.push(Check {
                endpoint: ep.clone(),
                direction: dir,
                remote_identity: remote,
                verdict: d.verdict,
                rules: d
                    .entry
                    .map(|e| e.derived_from.into_iter().collect())
                    .unwrap_or_default(),
            });
        }
        let mut verdict = ConnVerdict::Forward;
        for (i, c) in checks.iter().enumerate() {
            match c.verdict {
                None | Some(Verdict::Deny) => {
                    verdict = ConnVerdict::Deny(i);
                    break;
                }
                Some(Verdict::Redirect(L7Kind::Http)) => {
                    if verdict == ConnVerdict::Forward {
                        verdict = ConnVerdict::Http;
                    }
                }
                Some(Verdict::Redirect(kind)) => verdict = ConnVerdict::Unsupported(kind),
                Some(Verdict::Allow) => {}
            }
        }
        ConnPlan {
            revision: self.revision,
            source: PeerInfo {
                addr: src,
                identity: src_id,
                labels: self.labels(src_id),
                endpoint: src_ep,
            },
            destination: PeerInfo {
                addr: dst,
                identity: dst_id,
                labels: self.labels(dst_id),
                endpoint: dst_ep,
            },
            checks,
            verdict,
        }
    }

    /// Decides one HTTP request (`L7Request::Http`, as `l7_verdict` takes
    /// it, so that it is not copied per request) on a connection planned
    /// with this snapshot: every redirecting direction must admit it (each
    /// with `trace::l7_verdict`), exactly as `palisade policy trace`
    /// combines directions. Any other kind of request is denied.
    pub fn http_verdict(&self, plan: &ConnPlan, l7req: &L7Request) -> RequestVerdict {
        let port = plan.destination.addr.port();
        let mut out = RequestVerdict {
            allowed: true,
            rules: Vec::new(),
            endpoint: None,
            direction: None,
            explanation: String::new(),
            rewrites: Vec::new(),
            upgrade_allowed: true,
        };
        match plan.verdict {
            ConnVerdict::Deny(i) => {
                let c = &plan.checks[i.min(plan.checks.len().saturating_sub(1))];
                out.allowed = false;
                out.upgrade_allowed = false;
                out.rules = c.rules.clone();
                out.endpoint = Some(c.endpoint.clone());
                out.direction = Some(c.direction);
                out.explanation = format!(
                    "{} of {} denies identity {} on {port}/TCP",
                    c.direction.as_str(),
                    c.endpoint,
                    c.remote_identity
                );
                return out;
            }
            ConnVerdict::Unsupported(kind) => {
                out.allowed = false;
                out.upgrade_allowed = false;
                out.explanation = format!(
                    "redirected to the {} parser, which this proxy does not have",
                    kind.as_str()
                );
                return out;
            }
            ConnVerdict::Forward | ConnVerdict::Http => {}
        }
        let L7Request::Http(req) = l7req else {
            out.allowed = false;
            out.upgrade_allowed = false;
            out.explanation = "not an HTTP request".to_string();
            return out;
        };
        let upgrade_requested = req.method.eq_ignore_ascii_case("CONNECT")
            || req
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("upgrade"));
        let mut explanations = Vec::new();
        for c in &plan.checks {
            if c.verdict != Some(Verdict::Redirect(L7Kind::Http)) {
                continue;
            }
            let Some(map) = self.engine.endpoint_map(&c.endpoint) else {
                continue;
            };
            let Some(v) = l7_verdict(
                map,
                c.remote_identity,
                c.direction,
                TCP,
                port,
                L7Kind::Http,
                l7req,
            ) else {
                continue;
            };
            if out.endpoint.is_none() || !v.allowed {
                out.endpoint = Some(c.endpoint.clone());
                out.direction = Some(c.direction);
            }
            explanations.push(v.explanation);
            if !v.allowed {
                out.allowed = false;
                out.upgrade_allowed = false;
                out.rules = v.rules;
                out.rewrites.clear();
                out.explanation = explanations.pop().unwrap_or_default();
                return out;
            }
            out.rules.extend(v.rules);
            // A second look at the rules only when the request asks for an
            // upgrade or some rule rewrites headers (the common case costs
            // one matcher pass, inside `l7_verdict`).
            let mut upgrade = false;
            for contribution in map.l7_contributions(c.remote_identity, c.direction, TCP, port) {
                let rs = match &contribution.l7 {
                    L7Part::AllowAll => {
                        upgrade = true;
                        continue;
                    }
                    L7Part::Rules(rules) => match rules.as_ref() {
                        L7Rules::Http(rs) => rs,
                        _ => continue,
                    },
                };
                if rs.is_empty() {
                    upgrade = true;
                    continue;
                }
                if !rs.has_mismatch_actions() && !upgrade_requested {
                    continue;
                }
                for r in rs.matching(req) {
                    upgrade |= names_upgrade(r);
                    collect_rewrites(r, req, &mut out.rewrites);
                }
            }
            out.upgrade_allowed &= upgrade;
        }
        out.rules.sort();
        out.rules.dedup();
        out.explanation = if explanations.is_empty() {
            out.rules = plan.checks.iter().flat_map(|c| c.rules.clone()).collect();
            out.rules.sort();
            out.rules.dedup();
            "allowed at L3/L4 with no L7 rule".to_string()
        } else {
            explanations.join("; ")
        };
        out
    }
}

fn names_upgrade(r: &HttpRule) -> bool {
    r.headers
        .iter()
        .chain(r.header_matches.iter().filter(|h| h.mismatch.is_none()))
        .any(|h| h.name.eq_ignore_ascii_case("upgrade"))
}

/// The rewrites of a matching rule's `headerMatches` entries that have a
/// mismatch action and do not match. The mismatch test is the policy
/// crate's own header matcher (a one-header rule).
fn collect_rewrites(r: &HttpRule, req: &HttpRequest, out: &mut Vec<HeaderRewrite>) {
    for hm in &r.header_matches {
        let Some(action) = hm.mismatch else { continue };
        let mut probe = hm.clone();
        probe.mismatch = None;
        let single = HttpRule {
            headers: vec![probe],
            ..Default::default()
        };
        if single.matches(req) {
            continue;
        }
        let name = hm.name.clone();
        let rw = match (action, &hm.value) {
            (MismatchAction::DELETE, _) => HeaderRewrite::Delete { name },
            (MismatchAction::LOG, _) | (_, None) => HeaderRewrite::Log { name },
            (MismatchAction::ADD, Some(v)) => HeaderRewrite::Add {
                name,
                value: v.clone(),
            },
            (MismatchAction::REPLACE, Some(v)) => HeaderRewrite::Replace {
                name,
                value: v.clone(),
            },
        };
        if !out.contains(&rw) {
            out.push(rw);
        }
    }
}
