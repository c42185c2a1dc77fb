//! Transparent redirection with TPROXY in the node namespace.
//!
//! Pod traffic crosses the node namespace (each pod's veth ends there and
//! the node forwards between them). The proxy owns one nftables table
//! there, rebuilt atomically (`nft -f`, one transaction) from every policy
//! snapshot:
//!
//! ```text
//! table ip palisade_proxy {
//!   set ingress { type ipv4_addr . inet_service; flags interval; elements = { 10.0.2.30 . 80 } }
//!   set egress  { type ipv4_addr . inet_service; flags interval; ... }
//!   chain prerouting {
//!     type filter hook prerouting priority mangle; policy accept;
//!     meta l4proto tcp socket transparent 1 meta mark set 0x200 accept   # our sockets' traffic
//!     ip daddr . tcp dport @ingress tproxy to :15001 meta mark set 0x200 accept
//!     ip saddr . tcp dport @egress  tproxy to :15001 meta mark set 0x200 accept
//!   }
//! }
//! ```
//!
//! `ingress` holds (endpoint address, port) for every redirect entry of an
//! endpoint's ingress policy, `egress` the same for egress policies: every
//! connection that *may* need L7 enforcement reaches the proxy, which then
//! decides per connection with the same map lookup as the datapath (deny,
//! forward, or parse). Policy routing (`ip rule fwmark 0x200/0xf00 lookup
//! 2004`, `ip route local 0.0.0.0/0 dev lo table 2004`) delivers marked
//! packets locally. The listener is `IP_TRANSPARENT`, so `getsockname()` on
//! an accepted socket is the original destination.
//!
//! Upstream connections bind the client's address (`IP_TRANSPARENT`, port
//! chosen by the kernel) and carry `SO_MARK` [`UPSTREAM_MARK`]: the
//! destination's datapath sees the real source identity, and its replies
//! (addressed to a pod address that is not local) are caught by the
//! `socket transparent` rule and delivered to the proxy's socket.
//!
//! With the eBPF datapath attached, both legs keep real addresses: the
//! client leg is checked at the source veth's tc ingress (egress policy of
//! the client) before netfilter's prerouting hands it to the proxy, and the
//! upstream leg (client address, kernel-chosen port) crosses the
//! destination veth's tc egress, where the destination's ingress policy
//! sees the client's identity. A `Redirect` entry must therefore simply
//! pass in tc (as `l7_proxy_redirect()` does): the steering happens here.
//! Should the hook ever steer itself, it must skip packets marked
//! [`UPSTREAM_MARK`] (the proxy's own connections). IPv4 only for now.

use crate::config::{PROXY_MARK, PROXY_MARK_MASK, PROXY_ROUTE_TABLE, ProxyConfig, UPSTREAM_MARK};
use crate::error::ProxyError;
use crate::snapshot::{PolicySnapshot, TCP};
use palisade_policy::api::{Direction, L7Kind};
use palisade_policy::mapstate::Verdict;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

/// One (address, port range) that must reach the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub direction: Direction,
    pub ip: Ipv4Addr,
    pub port_lo: u16,
    pub port_hi: u16,
}

/// The redirect targets of a snapshot: every HTTP redirect entry of every
/// local endpoint, by address and port range.
pub fn targets(snapshot: &PolicySnapshot) -> BTreeSet<Target> {
    targets_of(snapshot.engine())
}

/// The redirect targets of an engine's resolved maps (what [`targets`]
/// reads from a snapshot).
pub fn targets_of(engine: &palisade_policy::engine::Engine) -> BTreeSet<Target> {
    let mut out = BTreeSet::new();
    for (key, _, map) in engine.endpoints() {
        let Some(pod) = engine.state().pod(key) else {
            continue;
        };
        for (k, e) in &map.entries {
            if e.verdict != Verdict::Redirect(L7Kind::Http) || (k.proto != TCP && k.proto != 0) {
                continue;
            }
            let (lo, hi) = port_range(k.port, k.prefix_len);
            for ip in &pod.ips {
                if let IpAddr::V4(ip) = ip {
                    out.insert(Target {
                        direction: k.direction,
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

/// The port range a key covers: `prefix_len` counts the protocol byte (8)
/// plus the leading port bits.
pub(crate) fn port_range(port: u16, prefix_len: u8) -> (u16, u16) {
    let bits = u32::from(prefix_len.saturating_sub(8)).min(16);
    if bits == 0 {
        return (1, u16::MAX);
    }
    let mask: u16 = if bits == 16 {
        u16::MAX
    } else {
        !(u16::MAX >> bits)
    };
    let lo = port & mask;
    (lo.max(1), lo | !mask)
}

/// The `elements = { ... }` clause of the targets of one direction.
fn set_elements(targets: &BTreeSet<Target>, dir: Direction) -> String {
    elements(
        targets
            .iter()
            .filter(|t| t.direction == dir)
            .map(|t| (t.ip, t.port_lo, t.port_hi)),
    )
}

/// An nftables `elements = { ip . port[-port], ... }` clause (empty for
/// no element); shared by the HTTP, DNS and Kafka tables.
pub(crate) fn elements(items: impl Iterator<Item = (std::net::Ipv4Addr, u16, u16)>) -> String {
    let v: Vec<String> = items
        .map(|(ip, lo, hi)| {
            if lo == hi {
                format!("{ip} . {lo}")
            } else {
                format!("{ip} . {lo}-{hi}")
            }
        })
        .collect();
    if v.is_empty() {
        String::new()
    } else {
        format!("elements = {{ {} }}", v.join(", "))
    }
}

/// The nftables script that replaces the proxy's table in one transaction.
pub fn ruleset(config: &ProxyConfig, targets: &BTreeSet<Target>) -> String {
    let elements = |dir: Direction| set_elements(targets, dir);
    let t = &config.nft_table;
    let port = config.port;
    format!(
        "table ip {t}\ndelete table ip {t}\n\
table ip {t} {{\n\
  set ingress {{ type ipv4_addr . inet_service; flags interval; {ing} }}\n\
  set egress {{ type ipv4_addr . inet_service; flags interval; {eg} }}\n\
  chain prerouting {{\n\
    type filter hook prerouting priority mangle; policy accept;\n\
    meta l4proto tcp socket transparent 1 meta mark set {mark:#x} accept\n\
    ip daddr . tcp dport @ingress tproxy to :{port} meta mark set {mark:#x} accept\n\
    ip saddr . tcp dport @egress tproxy to :{port} meta mark set {mark:#x} accept\n\
  }}\n\
}}\n",
        ing = elements(Direction::Ingress),
        eg = elements(Direction::Egress),
        mark = PROXY_MARK,
    )
}

/// The table of the fail-closed guard (owned by the agent, not the proxy).
pub const GUARD_TABLE: &str = "palisade_l7_guard";

/// What the fail-closed guard holds: every redirect target of every local
/// endpoint for the proxies there are (HTTP and Kafka over TCP, DNS over
/// UDP and TCP), by address, protocol and port range.
pub fn guard_targets(engine: &palisade_policy::engine::Engine) -> BTreeSet<GuardTarget> {
    [L7Kind::Http, L7Kind::Kafka, L7Kind::Dns]
        .into_iter()
        .flat_map(|kind| crate::dns::redirect::targets_in(engine, kind))
        .collect()
}

/// A guard element: the DNS table's (address, protocol, port range).
pub type GuardTarget = crate::dns::redirect::Target;

/// The guard: forwarded packets of a redirect target are dropped. Packets
/// a proxy's TPROXY rule takes are delivered locally (the input path),
/// never forwarded, and a proxy's own upstream packets are locally
/// generated; so the guard only drops what would bypass L7 enforcement
/// while a proxy is down, restarting or stopped (the HTTP proxy process,
/// or the agent with its DNS and Kafka proxies): L7 rules fail closed.
pub fn guard_ruleset(targets: &BTreeSet<GuardTarget>) -> String {
    let t = GUARD_TABLE;
    let (sets, rules) = crate::dns::redirect::sets_and_rules(targets, "counter drop");
    format!(
        "table ip {t}\ndelete table ip {t}\n\
table ip {t} {{\n{sets}\
  chain forward {{\n\
    type filter hook forward priority filter; policy accept;\n{rules}\
  }}\n\
}}\n"
    )
}

/// Replaces the guard table in the network namespace `netns`.
pub fn apply_guard(netns: &str, targets: &BTreeSet<GuardTarget>) -> Result<(), ProxyError> {
    run(
        "ip",
        &["netns", "exec", netns, "nft", "-f", "-"],
        Some(&guard_ruleset(targets)),
    )
}

/// Removes the guard table from `netns` (if there is one).
pub fn remove_guard(netns: &str) {
    let _ = run(
        "ip",
        &[
            "netns",
            "exec",
            netns,
            "nft",
            "delete",
            "table",
            "ip",
            GUARD_TABLE,
        ],
        None,
    );
}

/// Runs an iproute2/nftables command (with optional stdin); its stderr
/// becomes the error.
pub(crate) fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<(), ProxyError> {
    let text = format!("{cmd} {}", args.join(" "));
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ProxyError::Redirect {
            command: text.clone(),
            message: format!("{e} (are the Debian packages nftables and iproute2 installed?)"),
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| ProxyError::Redirect {
                command: text.clone(),
                message: e.to_string(),
            })?;
    }
    let out = child.wait_with_output().map_err(|e| ProxyError::Redirect {
        command: text.clone(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(ProxyError::Redirect {
            command: text,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Installs the policy routing that delivers marked packets locally
/// (idempotent). Must run in the node namespace.
pub fn install_routing() -> Result<(), ProxyError> {
    let mark = format!("{PROXY_MARK:#x}/{PROXY_MARK_MASK:#x}");
    let table = PROXY_ROUTE_TABLE.to_string();
    // Delete any copy first so repeated starts do not stack rules.
    while run(
        "ip",
        &["rule", "del", "fwmark", &mark, "lookup", &table],
        None,
    )
    .is_ok()
    {}
    run(
        "ip",
        &["rule", "add", "fwmark", &mark, "lookup", &table],
        None,
    )?;
    run(
        "ip",
        &[
            "route",
            "replace",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            &table,
        ],
        None,
    )
}

/// Replaces the proxy's nftables table with one built from `targets`.
pub fn apply(config: &ProxyConfig, targets: &BTreeSet<Target>) -> Result<(), ProxyError> {
    run("nft", &["-f", "-"], Some(&ruleset(config, targets)))
}

/// Removes the proxy's table and routing (clean shutdown).
pub fn uninstall(config: &ProxyConfig) {
    let _ = run(
        "nft",
        &["delete", "table", "ip", config.nft_table.as_str()],
        None,
    );
    let mark = format!("{PROXY_MARK:#x}/{PROXY_MARK_MASK:#x}");
    let table = PROXY_ROUTE_TABLE.to_string();
    while run(
        "ip",
        &["rule", "del", "fwmark", &mark, "lookup", &table],
        None,
    )
    .is_ok()
    {}
    let _ = run(
        "ip",
        &[
            "route",
            "del",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            &table,
        ],
        None,
    );
}

/// The TPROXY listener: `0.0.0.0:port`, `IP_TRANSPARENT`, `SO_REUSEADDR`.
pub fn listener(port: u16) -> Result<std::net::TcpListener, ProxyError> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| ProxyError::socket("creating the listener", e))?;
    s.set_reuse_address(true)
        .map_err(|e| ProxyError::socket("SO_REUSEADDR", e))?;
    s.set_ip_transparent_v4(true)
        .map_err(|e| ProxyError::socket("IP_TRANSPARENT on the listener", e))?;
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    s.bind(&addr.into())
        .map_err(|e| ProxyError::socket(format!("binding {addr}"), e))?;
    s.listen(4096)
        .map_err(|e| ProxyError::socket("listen", e))?;
    s.set_nonblocking(true)
        .map_err(|e| ProxyError::socket("O_NONBLOCK", e))?;
    Ok(s.into())
}

/// Connects to the original destination, from the client's address when
/// `source` is given (transparent bind, kernel-chosen port).
pub async fn connect_upstream(
    dst: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> std::io::Result<tokio::net::TcpStream> {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    s.set_mark(UPSTREAM_MARK)?;
    if let Some(src) = source {
        if src.is_ipv4() {
            s.set_ip_transparent_v4(true)?;
        }
        s.bind(&SocketAddr::new(src, 0).into())?;
    }
    let std: std::net::TcpStream = s.into();
    let socket = tokio::net::TcpSocket::from_std_stream(std);
    match tokio::time::timeout(timeout, socket.connect(dst)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connecting to {dst} timed out"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_follow_prefixes() {
        assert_eq!(port_range(80, 24), (80, 80));
        assert_eq!(port_range(8080, 8), (1, u16::MAX));
        assert_eq!(port_range(0x1f00, 16), (0x1f00, 0x1fff));
    }

    #[test]
    fn ruleset_replaces_the_table_atomically() {
        let cfg = ProxyConfig::default();
        let mut t = BTreeSet::new();
        t.insert(Target {
            direction: Direction::Ingress,
            ip: Ipv4Addr::new(10, 0, 2, 30),
            port_lo: 80,
            port_hi: 80,
        });
        let s = ruleset(&cfg, &t);
        assert!(s.starts_with("table ip palisade_proxy\ndelete table ip palisade_proxy\n"));
        assert!(s.contains("elements = { 10.0.2.30 . 80 }"), "{s}");
        assert!(s.contains("tproxy to :15001"), "{s}");
    }

    #[test]
    fn the_guard_covers_dns_over_udp_as_well_as_tcp_targets() {
        let t: BTreeSet<GuardTarget> = [(Direction::Egress, 17, 53), (Direction::Ingress, 6, 80)]
            .into_iter()
            .map(|(direction, proto, port)| GuardTarget {
                direction,
                proto,
                ip: Ipv4Addr::new(10, 0, 2, 30),
                port_lo: port,
                port_hi: port,
            })
            .collect();
        let s = guard_ruleset(&t);
        assert!(s.starts_with("table ip palisade_l7_guard\ndelete table ip palisade_l7_guard\n"));
        for want in [
            "set egress_udp { type ipv4_addr . inet_service; flags interval; elements = { 10.0.2.30 . 53 } }",
            "set ingress_tcp { type ipv4_addr . inet_service; flags interval; elements = { 10.0.2.30 . 80 } }",
            "ip saddr . udp dport @egress_udp counter drop",
            "ip daddr . tcp dport @ingress_tcp counter drop",
        ] {
            assert!(s.contains(want), "{want} in {s}");
        }
    }
}
