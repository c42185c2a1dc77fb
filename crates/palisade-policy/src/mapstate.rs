//! The per-endpoint policy map, in the datapath's own key shape, and the one
//! verdict function that `trace`, the proxies and the kernel share.
//!
//! A key is {remote identity (0 = any), direction, protocol, port prefix}.
//! The verdict is the datapath's two lookups: the longest match for the
//! exact identity, then for identity 0; the higher precedence wins, then the
//! longer prefix, then the exact identity.

use crate::api::{AuthMode, Direction, L7Kind, L7Rules, PolicyId};
use crate::identity::{NumericIdentity, WILDCARD};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// Precedence of rules at the default API priority (0): the upper 24 bits
/// are the inverted priority, the low byte the verdict class.
pub const PRIORITY_0: u32 = 0xFF_FFFF << 8;
pub const PRECEDENCE_DENY: u32 = PRIORITY_0 | 255;
pub const PRECEDENCE_ALLOW: u32 = PRIORITY_0 | 1;

/// A policy map key. `prefix_len` covers protocol then port: 0 matches any
/// protocol and port, 8 a protocol with any port, 9..=24 a port prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Key {
    pub identity: NumericIdentity,
    pub direction: Direction,
    pub proto: u8,
    pub port: u16,
    pub prefix_len: u8,
}

impl Key {
    /// Every protocol and port.
    pub fn any(identity: NumericIdentity, direction: Direction) -> Key {
        Key {
            identity,
            direction,
            proto: 0,
            port: 0,
            prefix_len: 0,
        }
    }

    /// Whether this key's protocol/port prefix covers a concrete protocol
    /// and port (for ICMP, the type).
    pub fn covers(&self, proto: u8, port: u16) -> bool {
        if self.prefix_len == 0 {
            return true;
        }
        if self.proto != proto {
            return false;
        }
        let bits = self.prefix_len.saturating_sub(8);
        if bits == 0 {
            return true;
        }
        let mask: u16 = if bits >= 16 {
            u16::MAX
        } else {
            !(u16::MAX >> bits)
        };
        (port & mask) == (self.port & mask)
    }

    /// Whether this key's range contains the other's (same identity and
    /// direction assumed).
    pub fn contains(&self, other: &Key) -> bool {
        self.prefix_len <= other.prefix_len && self.covers(other.proto, other.port)
    }

    /// `80/TCP`, `8080-8095/TCP`, `TCP`, `ANY`; ICMP types as `8/ICMP`.
    pub fn port_text(&self) -> String {
        if self.prefix_len == 0 {
            return "ANY".into();
        }
        let proto = crate::api::Protocol::from_number(self.proto)
            .map(|p| p.to_string())
            .unwrap_or_else(|| self.proto.to_string());
        let bits = self.prefix_len - 8;
        if bits == 0 {
            return proto;
        }
        if bits >= 16 {
            return format!("{}/{proto}", self.port);
        }
        let span = 1u32 << (16 - bits);
        let end = u32::from(self.port) + span - 1;
        format!("{}-{end}/{proto}", self.port)
    }
}

/// Where an entry came from: a policy, its rule and the section.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
pub struct RuleRef {
    pub policy: PolicyId,
    /// `spec.ingress[0].toPorts[1]`, `specs[2].egressDeny[0]`.
    pub section: String,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.policy, self.section)
    }
}

/// The verdict class of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Verdict {
    Allow,
    /// Allowed at L3/L4 and redirected to the proxy of this kind.
    Redirect(L7Kind),
    Deny,
}

impl Verdict {
    pub fn precedence(&self) -> u32 {
        match self {
            Verdict::Deny => PRECEDENCE_DENY,
            Verdict::Redirect(k) => PRIORITY_0 | u32::from(k.redirect_precedence()),
            Verdict::Allow => PRECEDENCE_ALLOW,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Redirect(_) => "redirect",
            Verdict::Deny => "deny",
        }
    }
}

/// The L7 part of one contribution: rules, or everything (an L3/L4 allow
/// on the same port widens L7 to allow-all).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum L7Part {
    AllowAll,
    Rules(Arc<L7Rules>),
}

/// One rule's contribution to a key.
#[derive(Clone, Debug, Serialize)]
pub struct Contribution {
    pub rule: RuleRef,
    pub verdict: Verdict,
    pub l7: L7Part,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthMode>,
}

/// A policy map entry.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub verdict: Verdict,
    pub precedence: u32,
    /// Cilium's auth type (0 none, 1 spire, 2 always-fail).
    pub auth_type: u8,
    /// The rules that produced this entry (at the winning verdict).
    pub derived_from: BTreeSet<RuleRef>,
}

impl Entry {
    /// A stable 32-bit cookie naming the entry's first rule (the datapath
    /// carries it in events; `cookies()` maps it back).
    pub fn cookie(&self) -> u32 {
        self.derived_from.iter().next().map_or(0, rule_cookie)
    }
}

/// The cookie of a rule reference (FNV-1a of its text).
pub fn rule_cookie(r: &RuleRef) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in r.to_string().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    h.max(1)
}

/// A change to apply to the datapath.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MapDelta {
    pub adds: Vec<(Key, Entry)>,
    pub removes: Vec<Key>,
}

impl MapDelta {
    pub fn is_empty(&self) -> bool {
        self.adds.is_empty() && self.removes.is_empty()
    }
}

/// Why a direction is or is not enforced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Enforcement {
    /// Default deny applies: some selecting rule has entries in this
    /// direction without `enableDefaultDeny: false`.
    pub default_deny: bool,
    /// The policies that select the endpoint in this direction.
    pub selected_by: BTreeSet<PolicyId>,
}

/// The resolved policy of one endpoint: the datapath entries plus every
/// contribution (for L7 decisions and explanations).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PolicyMap {
    pub entries: BTreeMap<Key, Entry>,
    /// All contributions per key, before pruning.
    #[serde(skip)]
    pub contributions: BTreeMap<Key, Vec<Contribution>>,
    pub ingress: Enforcement,
    pub egress: Enforcement,
}

/// The result of a lookup.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub allowed: bool,
    pub verdict: Option<Verdict>,
    /// The winning key, if any entry matched.
    pub key: Option<Key>,
    #[serde(skip)]
    pub entry: Option<Entry>,
    /// Cilium's drop reason: 133 policy denied (no entry), 181 deny entry.
    pub drop_reason: u8,
    /// Cilium's match type (1 L3-only, 2 L3L4, 3 L4-only, 4 all, 5 L3+proto, 6 proto-only).
    pub match_type: u8,
}

impl PolicyMap {
    pub fn enforcement(&self, dir: Direction) -> &Enforcement {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Longest-prefix match among one identity's entries.
    fn lpm(
        &self,
        identity: NumericIdentity,
        dir: Direction,
        proto: u8,
        port: u16,
    ) -> Option<(&Key, &Entry)> {
        let lo = Key {
            identity,
            direction: dir,
            proto: 0,
            port: 0,
            prefix_len: 0,
        };
        let hi = Key {
            identity,
            direction: dir,
            proto: u8::MAX,
            port: u16::MAX,
            prefix_len: u8::MAX,
        };
        self.entries
            .range(lo..=hi)
            .filter(|(k, _)| k.covers(proto, port))
            .max_by_key(|(k, _)| k.prefix_len)
    }

    /// The verdict for a packet from (ingress) or to (egress) `identity`,
    /// exactly as the datapath computes it.
    pub fn lookup(
        &self,
        identity: NumericIdentity,
        dir: Direction,
        proto: u8,
        port: u16,
    ) -> Decision {
        let l3 = if identity == WILDCARD {
            None
        } else {
            self.lpm(identity, dir, proto, port)
        };
        let winner = match l3 {
            Some((k, e)) if e.precedence == PRECEDENCE_DENY => Some((k, e)),
            _ => {
                let l4 = self.lpm(WILDCARD, dir, proto, port);
                match (l3, l4) {
                    (Some(a), Some(b)) => {
                        if (b.1.precedence, b.0.prefix_len) > (a.1.precedence, a.0.prefix_len) {
                            Some(b)
                        } else {
                            Some(a)
                        }
                    }
                    (a, b) => a.or(b),
                }
            }
        };
        match winner {
            None => Decision {
                allowed: false,
                verdict: None,
                key: None,
                entry: None,
                drop_reason: 133,
                match_type: 0,
            },
            Some((k, e)) => {
                let l3 = k.identity != WILDCARD;
                let match_type = match (l3, k.prefix_len) {
                    (true, 0) => 1,
                    (true, 8) => 5,
                    (true, _) => 2,
                    (false, 0) => 4,
                    (false, 8) => 6,
                    (false, _) => 3,
                };
                Decision {
                    allowed: e.verdict != Verdict::Deny,
                    verdict: Some(e.verdict),
                    key: Some(*k),
                    entry: Some(e.clone()),
                    drop_reason: if e.verdict == Verdict::Deny { 181 } else { 0 },
                    match_type,
                }
            }
        }
    }

    /// The L7 contributions that apply to a redirected connection: every
    /// allow or redirect contribution whose key covers it, for the exact
    /// identity and for any identity.
    pub fn l7_contributions(
        &self,
        identity: NumericIdentity,
        dir: Direction,
        proto: u8,
        port: u16,
    ) -> Vec<&Contribution> {
        let mut out = Vec::new();
        for id in [identity, WILDCARD] {
            let lo = Key {
                identity: id,
                direction: dir,
                proto: 0,
                port: 0,
                prefix_len: 0,
            };
            let hi = Key {
                identity: id,
                direction: dir,
                proto: u8::MAX,
                port: u16::MAX,
                prefix_len: u8::MAX,
            };
            for (k, cs) in self.contributions.range(lo..=hi) {
                if k.covers(proto, port) {
                    out.extend(cs.iter().filter(|c| c.verdict != Verdict::Deny));
                }
                if id == WILDCARD && identity == WILDCARD {
                    break;
                }
            }
            if identity == WILDCARD {
                break;
            }
        }
        out
    }

    /// The changes that turn `old` into `self`.
    pub fn diff(&self, old: &PolicyMap) -> MapDelta {
        let mut d = MapDelta::default();
        for (k, e) in &self.entries {
            match old.entries.get(k) {
                Some(o) if same_entry(o, e) => {}
                _ => d.adds.push((*k, e.clone())),
            }
        }
        for k in old.entries.keys() {
            if !self.entries.contains_key(k) {
                d.removes.push(*k);
            }
        }
        d
    }

    /// Every cookie of this map and its rule.
    pub fn cookies(&self) -> BTreeMap<u32, RuleRef> {
        self.entries
            .values()
            .flat_map(|e| e.derived_from.iter())
            .map(|r| (rule_cookie(r), r.clone()))
            .collect()
    }
}

fn same_entry(a: &Entry, b: &Entry) -> bool {
    a.verdict == b.verdict
        && a.precedence == b.precedence
        && a.auth_type == b.auth_type
        && a.derived_from == b.derived_from
}

/// Builds the entries of one identity (or the wildcard) from contributions:
/// merge per key, then prune keys that a broader key of higher precedence
/// covers (so the datapath's longest-prefix lookup finds the winner).
pub fn build_entries(contributions: &BTreeMap<Key, Vec<Contribution>>) -> BTreeMap<Key, Entry> {
    let mut merged: BTreeMap<Key, Entry> = BTreeMap::new();
    for (k, cs) in contributions {
        let Some(best) = cs.iter().map(|c| c.verdict).max_by_key(|v| v.precedence()) else {
            continue;
        };
        let derived_from: BTreeSet<RuleRef> = cs
            .iter()
            .filter(|c| c.verdict == best)
            .map(|c| c.rule.clone())
            .collect();
        let auth_type = if best == Verdict::Deny {
            0
        } else {
            cs.iter()
                .filter_map(|c| c.auth.map(|a| a.auth_type()))
                .max()
                .unwrap_or(0)
        };
        merged.insert(
            *k,
            Entry {
                verdict: best,
                precedence: best.precedence(),
                auth_type,
                derived_from,
            },
        );
    }
    prune(merged)
}

fn prune(entries: BTreeMap<Key, Entry>) -> BTreeMap<Key, Entry> {
    // Group by (identity, direction); within a group drop any key covered
    // by a broader key of strictly higher precedence.
    let keys: Vec<(Key, u32)> = entries.iter().map(|(k, e)| (*k, e.precedence)).collect();
    let mut drop = BTreeSet::new();
    let mut i = 0;
    while i < keys.len() {
        let mut j = i;
        while j < keys.len()
            && keys[j].0.identity == keys[i].0.identity
            && keys[j].0.direction == keys[i].0.direction
        {
            j += 1;
        }
        let group = &keys[i..j];
        if group.len() > 1 {
            for (k, p) in group {
                if group
                    .iter()
                    .any(|(b, bp)| bp > p && b.prefix_len < k.prefix_len && b.contains(k))
                {
                    drop.insert(*k);
                }
            }
        }
        i = j;
    }
    entries
        .into_iter()
        .filter(|(k, _)| !drop.contains(k))
        .collect()
}

/// Splits an inclusive port range into aligned (port, prefix bits) blocks,
/// as Cilium does: 80-444 gives 9 blocks; 1-65534 gives 30.
pub fn port_range_blocks(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let mut start = u32::from(lo);
    let end = u32::from(hi);
    while start <= end {
        let mut size: u32 = 1;
        let mut bits: u8 = 16;
        while bits > 0 {
            let next = size * 2;
            if start % next != 0 || start + next - 1 > end {
                break;
            }
            size = next;
            bits -= 1;
        }
        out.push((start as u16, bits));
        start += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_split_like_cilium() {
        assert_eq!(port_range_blocks(80, 444).len(), 9);
        assert_eq!(port_range_blocks(1, 65534).len(), 30);
        assert_eq!(port_range_blocks(80, 80), vec![(80, 16)]);
        assert_eq!(port_range_blocks(0, 65535), vec![(0, 0)]);
    }

    #[test]
    fn key_coverage() {
        let k = Key {
            identity: 0,
            direction: Direction::Ingress,
            proto: 6,
            port: 8080,
            prefix_len: 8 + 12,
        };
        assert!(k.covers(6, 8095));
        assert!(!k.covers(6, 8096));
        assert!(!k.covers(17, 8080));
        assert_eq!(k.port_text(), "8080-8095/TCP");
    }
}
