//! TPROXY redirection for the parsers that are not HTTP (DNS over UDP and
//! TCP, Kafka over TCP), built like the HTTP proxy's ([`crate::redirect`])
//! and sharing its policy routing (`fwmark 0x200/0xf00 lookup 2004`), but
//! in a table of its own per parser, so each proxy reconciles only its own
//! sets:
//!
//! ```text
//! table ip palisade_dns {
//!   set egress_udp { type ipv4_addr . inet_service; flags interval; elements = { 10.0.1.10 . 53 } }
//!   set egress_tcp { ... }  set ingress_udp { ... }  set ingress_tcp { ... }
//!   chain prerouting {
//!     type filter hook prerouting priority mangle; policy accept;
//!     ip saddr . udp dport @egress_udp tproxy to :15053 meta mark set 0x200 accept
//!     ip saddr . tcp dport @egress_tcp tproxy to :15053 meta mark set 0x200 accept
//!     ip daddr . udp dport @ingress_udp tproxy to :15053 meta mark set 0x200 accept
//!     ip daddr . tcp dport @ingress_tcp tproxy to :15053 meta mark set 0x200 accept
//!     meta l4proto { tcp, udp } socket transparent 1 socket mark 0xb00 meta mark set 0x200 accept
//!   }
//! }
//! ```
//!
//! The last rule delivers the replies of the proxy's own upstream sockets
//! (transparent, bound to the client's address, `SO_MARK` 0xb00). It is
//! restricted to marked sockets: the DNS proxy answers UDP clients from
//! sockets bound to the resolver's address, and those must never capture
//! other pods' queries to that resolver.

use crate::config::{PROXY_MARK, UPSTREAM_MARK};
use crate::error::ProxyError;
use crate::snapshot::PolicySnapshot;
use palisade_policy::api::{Direction, L7Kind};
use palisade_policy::mapstate::Verdict;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

/// One (address, protocol, port range) that must reach a proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub direction: Direction,
    /// 6 or 17.
    pub proto: u8,
    pub ip: Ipv4Addr,
    pub port_lo: u16,
    pub port_hi: u16,
}

/// Every `kind` redirect entry of every local endpoint, by address,
/// protocol and port range (an ANY entry yields TCP and UDP).
pub fn targets(snapshot: &PolicySnapshot, kind: L7Kind) -> BTreeSet<Target> {
    targets_in(snapshot.engine(), kind)
}

/// [`targets`] of an engine.
pub fn targets_in(engine: &palisade_policy::engine::Engine, kind: L7Kind) -> BTreeSet<Target> {
    let mut out = BTreeSet::new();
    for (key, _, map) in engine.endpoints() {
        let Some(pod) = engine.state().pod(key) else {
            continue;
        };
        for (k, e) in &map.entries {
            if e.verdict != Verdict::Redirect(kind) {
                continue;
            }
            let protos: &[u8] = match k.proto {
                0 => &[6, 17],
                6 => &[6],
                17 => &[17],
                _ => &[],
            };
            let (lo, hi) = crate::redirect::port_range(k.port, k.prefix_len);
            for ip in &pod.ips {
                let IpAddr::V4(ip) = ip else { continue };
                for p in protos {
                    out.insert(Target {
                        direction: k.direction,
                        proto: *p,
                        ip: *ip,
                        port_lo: lo,
                        port_hi: hi,
                    });
                }
            }
        }
    }
    out
}

/// One nftables set per direction and protocol of `targets`
/// (`egress_udp`, `egress_tcp`, `ingress_udp`, `ingress_tcp`) and one rule
/// per set that applies `action` to the packets it matches (the pod's
/// address is the source on egress, the destination on ingress). Shared by
/// the DNS and Kafka redirect tables and the fail-closed guard.
pub(crate) fn sets_and_rules(targets: &BTreeSet<Target>, action: &str) -> (String, String) {
    let mut sets = String::new();
    let mut rules = String::new();
    for (dir, field) in [(Direction::Egress, "saddr"), (Direction::Ingress, "daddr")] {
        for (proto, pname) in [(17u8, "udp"), (6u8, "tcp")] {
            let set = format!("{}_{pname}", dir.as_str());
            let items = crate::redirect::elements(
                targets
                    .iter()
                    .filter(|t| t.direction == dir && t.proto == proto)
                    .map(|t| (t.ip, t.port_lo, t.port_hi)),
            );
            sets.push_str(&format!(
                "  set {set} {{ type ipv4_addr . inet_service; flags interval; {items} }}\n"
            ));
            rules.push_str(&format!("    ip {field} . {pname} dport @{set} {action}\n"));
        }
    }
    (sets, rules)
}

/// The script that replaces `table` in one transaction.
pub fn ruleset(table: &str, port: u16, targets: &BTreeSet<Target>) -> String {
    let (sets, rules) = sets_and_rules(
        targets,
        &format!("tproxy to :{port} meta mark set {PROXY_MARK:#x} accept"),
    );
    format!(
        "table ip {table}\ndelete table ip {table}\n\
table ip {table} {{\n{sets}\
  chain prerouting {{\n\
    type filter hook prerouting priority mangle; policy accept;\n{rules}\
    meta l4proto {{ tcp, udp }} socket transparent 1 socket mark {UPSTREAM_MARK:#x} meta mark set {PROXY_MARK:#x} accept\n\
  }}\n\
}}\n"
    )
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<(), ProxyError> {
    crate::redirect::run("nft", args, stdin)
}

/// Installs the shared policy routing and replaces `table`.
pub fn apply(table: &str, port: u16, targets: &BTreeSet<Target>) -> Result<(), ProxyError> {
    crate::redirect::install_routing()?;
    nft(&["-f", "-"], Some(&ruleset(table, port, targets)))
}

/// Removes `table` (the shared routing stays: the HTTP proxy may use it).
pub fn uninstall(table: &str) {
    let _ = nft(&["delete", "table", "ip", table], None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_has_udp_and_tcp_sets() {
        let mut t = BTreeSet::new();
        t.insert(Target {
            direction: Direction::Egress,
            proto: 17,
            ip: Ipv4Addr::new(10, 0, 1, 10),
            port_lo: 53,
            port_hi: 53,
        });
        let s = ruleset("palisade_dns", 15053, &t);
        assert!(s.contains("set egress_udp { type ipv4_addr . inet_service; flags interval; elements = { 10.0.1.10 . 53 } }"), "{s}");
        assert!(
            s.contains("ip saddr . udp dport @egress_udp tproxy to :15053"),
            "{s}"
        );
        assert!(s.contains("socket mark 0xb00"), "{s}");
    }
}
