//! Every L3/L4 acceptance case that involves pods, CIDRs (outside
//! addresses) or nodes, checked on the wire: a two-node cluster (one agent
//! per node, each in its own node namespace, joined by a veth), pods with
//! the manifests' addresses and labels, a "world" namespace holding every
//! outside address the tests use, and real TCP/UDP/ICMP connections. The
//! wire must agree with `trace` (on the whole cluster state), and `trace`
//! with the expected verdict.
//!
//! Not reproducible here (skipped, listed in the output): L7 (`http`,
//! `kafka`, `dns`, `dnsName`), `entity:` peers (e.g. a health endpoint),
//! SCTP, ICMP types other than echo (8), port 0, host-network pods.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Cleanup, Names, is_root};
use palisade_agent::traffic::{self, Outcome, Servers};
use palisade_agent::{Agent, PodRunSpec};
use palisade_datapath::netns::{self, PodSpec};
use palisade_policy::api::Protocol;
use palisade_policy::engine::Engine;
use palisade_policy::manifest::{Object, Options, parse_file};
use palisade_policy::trace::{PeerSpec, Query, trace};
use serde::Deserialize;

fn shared() -> PathBuf {
    if let Some(dir) = std::env::var_os("PALISADE_SHARED") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

#[derive(Debug, Deserialize)]
struct TestsFile {
    tests: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    name: String,
    from: String,
    to: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    icmp_type: Option<u8>,
    #[serde(default)]
    http: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    kafka: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    dns: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    dns_name: Option<String>,
    expect: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Proto {
    Tcp(u16),
    Udp(u16),
    Icmp,
}

/// Where a peer lives on the wire.
#[derive(Debug, Clone)]
enum Place {
    Pod(String),
    Node(String),
    Ext(Ipv4Addr),
}

struct Cluster {
    agents: BTreeMap<String, Agent>,
    node_ns: BTreeMap<String, String>,
    node_ip: BTreeMap<String, Ipv4Addr>,
    pods: BTreeMap<String, (String, Ipv4Addr, String)>, // key -> (netns, ip, node)
    world_ns: String,
    engine: Engine,
    _servers: Vec<Servers>,
    _cleanups: Vec<Cleanup>,
}

fn v4(ip: &IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    }
}

fn place(c: &Cluster, peer: &str) -> Option<Place> {
    if let Some(n) = peer.strip_prefix("node:") {
        return c
            .node_ip
            .contains_key(n)
            .then(|| Place::Node(n.to_string()));
    }
    if let Some(ip) = peer.strip_prefix("ip:") {
        let ip: Ipv4Addr = ip.parse().ok()?;
        if let Some((k, _)) = c.pods.iter().find(|(_, v)| v.1 == ip) {
            return Some(Place::Pod(k.clone()));
        }
        if let Some((n, _)) = c.node_ip.iter().find(|(_, a)| **a == ip) {
            return Some(Place::Node(n.clone()));
        }
        return Some(Place::Ext(ip));
    }
    if peer.starts_with("entity:") {
        return None;
    }
    c.pods
        .contains_key(peer)
        .then(|| Place::Pod(peer.to_string()))
}

fn proto_of(case: &Case) -> Option<Proto> {
    match case.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => case.port.filter(|p| *p != 0).map(Proto::Tcp),
        "UDP" => case.port.filter(|p| *p != 0).map(Proto::Udp),
        "ICMP" => (case.icmp_type == Some(8)).then_some(Proto::Icmp),
        _ => None,
    }
}

fn skip_reason(c: &Cluster, case: &Case) -> Option<&'static str> {
    if case.http.is_some() || case.kafka.is_some() || case.dns.is_some() || case.dns_name.is_some()
    {
        return Some("L7/DNS (comes with the proxy)");
    }
    if place(c, &case.from).is_none() || place(c, &case.to).is_none() {
        return Some("peer not reproducible on the wire (entity / host-network)");
    }
    if proto_of(case).is_none() {
        return Some("protocol/port not probeable (SCTP, port 0, ICMP type other than echo)");
    }
    None
}

fn ns_of(c: &Cluster, p: &Place) -> String {
    match p {
        Place::Pod(k) => c.pods[k].0.clone(),
        Place::Node(n) => c.node_ns[n].clone(),
        Place::Ext(_) => c.world_ns.clone(),
    }
}

fn ip_of(c: &Cluster, p: &Place) -> Ipv4Addr {
    match p {
        Place::Pod(k) => c.pods[k].1,
        Place::Node(n) => c.node_ip[n],
        Place::Ext(ip) => *ip,
    }
}

fn ip_link(args: &[&str]) {
    netns::ip(args).unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")));
}

fn build(group: &str, cases: &[Case]) -> Option<Cluster> {
    let dir = shared().join("acceptance/semantics").join(group);
    let text = std::fs::read_to_string(dir.join("manifests.yaml")).ok()?;
    let objects: Vec<Object> = parse_file("manifests.yaml", &text, &Options::default())
        .into_iter()
        .filter_map(|d| d.object)
        .collect();
    let engine = Engine::from_objects(objects.clone());
    let mut nodes: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    for o in &objects {
        if let Object::Node(n) = o
            && let Some(a) = n.addresses.iter().find_map(v4)
        {
            nodes.insert(n.name.clone(), a);
        }
    }
    assert!(
        !nodes.is_empty() && nodes.len() <= 2,
        "{group}: 1 or 2 nodes expected"
    );
    let mut cleanups = Vec::new();
    let mut agents = BTreeMap::new();
    let mut node_ns = BTreeMap::new();
    for (i, (name, addr)) in nodes.iter().enumerate() {
        let names = Names::new(&format!("acc{i}"));
        cleanups.push(Cleanup(names.clone()));
        let mut cfg = names.config(name, &format!("10.250.{i}.0/24"));
        cfg.node_address = *addr;
        let agent = Agent::start(cfg).expect("agent starts");
        agent
            .apply_text("manifests.yaml", &text)
            .expect("acceptance manifests apply");
        node_ns.insert(name.clone(), names.node_netns.clone());
        agents.insert(name.clone(), agent);
    }
    let node_list: Vec<(String, Ipv4Addr)> = nodes.iter().map(|(n, a)| (n.clone(), *a)).collect();
    // pods, on their node
    let mut pods = BTreeMap::new();
    for o in &objects {
        if let Object::Pod(p) = o {
            let (Some(node), Some(ip)) = (&p.node_name, p.ips.iter().find_map(v4)) else {
                continue;
            };
            if p.host_network {
                continue;
            }
            let Some(agent) = agents.get(node) else {
                continue;
            };
            let info = agent
                .run_pod(PodRunSpec {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    ip: Some(ip),
                    service_account: Some(p.service_account.clone()),
                    ..Default::default()
                })
                .expect("pod run");
            pods.insert(p.key(), (info.netns, ip, node.clone()));
        }
    }
    // the inter-node link: node0 <-> node1 with link-local gateways
    let first = &node_list[0];
    if let Some(second) = node_list.get(1) {
        let (a, b) = (&node_ns[&first.0], &node_ns[&second.0]);
        ip_link(&[
            "-n",
            a,
            "link",
            "add",
            "nl0",
            "address",
            "02:cc:00:00:00:01",
            "type",
            "veth",
            "peer",
            "name",
            "nl1",
            "address",
            "02:cc:00:00:00:02",
            "netns",
            b,
        ]);
        ip_link(&["-n", a, "link", "set", "nl0", "up"]);
        ip_link(&["-n", b, "link", "set", "nl1", "up"]);
        ip_link(&[
            "-n",
            a,
            "neigh",
            "replace",
            "169.254.2.2",
            "lladdr",
            "02:cc:00:00:00:02",
            "dev",
            "nl0",
            "nud",
            "permanent",
        ]);
        ip_link(&[
            "-n",
            b,
            "neigh",
            "replace",
            "169.254.2.1",
            "lladdr",
            "02:cc:00:00:00:01",
            "dev",
            "nl1",
            "nud",
            "permanent",
        ]);
        ip_link(&[
            "-n",
            a,
            "route",
            "replace",
            "169.254.2.2/32",
            "dev",
            "nl0",
            "scope",
            "link",
        ]);
        ip_link(&[
            "-n",
            b,
            "route",
            "replace",
            "169.254.2.1/32",
            "dev",
            "nl1",
            "scope",
            "link",
        ]);
        // node1 sends everything it does not own to node0
        ip_link(&[
            "-n",
            b,
            "route",
            "replace",
            "default",
            "via",
            "169.254.2.1",
            "dev",
            "nl1",
        ]);
        // node0 routes node1 and its pods over the link
        let mut remote: Vec<Ipv4Addr> = vec![second.1];
        remote.extend(pods.values().filter(|v| v.2 == second.0).map(|v| v.1));
        for ip in remote {
            ip_link(&[
                "-n",
                a,
                "route",
                "replace",
                &format!("{ip}/32"),
                "via",
                "169.254.2.2",
                "dev",
                "nl0",
            ]);
        }
    }
    // the world: every outside address the cases use, behind node0
    let mut c = Cluster {
        agents,
        node_ns,
        node_ip: nodes,
        pods,
        world_ns: String::new(),
        engine,
        _servers: Vec::new(),
        _cleanups: Vec::new(),
    };
    let world_ns = format!("{}-world", c.node_ns[&first.0]);
    c.world_ns = world_ns.clone();
    let mut ext: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut listen: BTreeMap<String, (BTreeSet<u16>, BTreeSet<u16>)> = BTreeMap::new();
    for case in cases {
        if skip_reason(&c, case).is_some() {
            continue;
        }
        for peer in [&case.from, &case.to] {
            if let Some(Place::Ext(ip)) = place(&c, peer) {
                ext.insert(ip);
            }
        }
        let Some(to) = place(&c, &case.to) else {
            continue;
        };
        let key = match &to {
            Place::Ext(_) => "world".to_string(),
            p => ns_of(&c, p),
        };
        let e = listen.entry(key).or_default();
        match proto_of(case) {
            Some(Proto::Tcp(p)) => {
                e.0.insert(p);
            }
            Some(Proto::Udp(p)) => {
                e.1.insert(p);
            }
            _ => {}
        }
    }
    let ext: Vec<Ipv4Addr> = ext.into_iter().collect();
    if let Some(first_ext) = ext.first() {
        let n0 = c.node_ns[&first.0].clone();
        netns::create_pod(
            Some(&n0),
            &PodSpec {
                netns: world_ns.clone(),
                host_ifname: "world0".into(),
                ip: *first_ext,
                host_mac: [0x02, 0xee, 0, 0, 0, 1],
                pod_mac: [0x02, 0xef, 0, 0, 0, 1],
            },
        )
        .expect("world namespace");
        for extra in &ext[1..] {
            ip_link(&[
                "-n",
                &world_ns,
                "addr",
                "add",
                &format!("{extra}/32"),
                "dev",
                "eth0",
            ]);
            ip_link(&[
                "-n",
                &n0,
                "route",
                "replace",
                &format!("{extra}/32"),
                "dev",
                "world0",
                "scope",
                "link",
            ]);
            ip_link(&[
                "-n",
                &n0,
                "neigh",
                "replace",
                &extra.to_string(),
                "lladdr",
                "02:ef:00:00:00:01",
                "dev",
                "world0",
                "nud",
                "permanent",
            ]);
        }
    }
    let mut servers = Vec::new();
    for (ns, (tcp, udp)) in &listen {
        let tcp: Vec<u16> = tcp.iter().copied().collect();
        let udp: Vec<u16> = udp.iter().copied().collect();
        let s = if ns == "world" {
            Servers::start_on(&world_ns, &ext, &tcp, &udp)
        } else {
            Servers::start(ns, &tcp, &udp)
        };
        servers.push(s.expect("servers"));
    }
    c._servers = servers;
    c._cleanups = cleanups;
    Some(c)
}

fn check_group(group: &str) {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = shared().join("acceptance/semantics").join(group);
    let Ok(tests_text) = std::fs::read_to_string(dir.join("tests.yaml")) else {
        eprintln!("skipped: no shared acceptance data at {}", dir.display());
        return;
    };
    let tf: TestsFile = serde_saphyr::from_str(&tests_text).expect("tests.yaml");
    let c = build(group, &tf.tests).expect("cluster");
    let timeout = Duration::from_millis(500);
    let runnable: Vec<&Case> = tf
        .tests
        .iter()
        .filter(|t| {
            let r = skip_reason(&c, t);
            if let Some(why) = r {
                eprintln!("[{group}] skipped {:?}: {why}", t.name);
            }
            r.is_none()
        })
        .collect();
    let results: Vec<(&Case, Outcome, bool)> = std::thread::scope(|s| {
        let hs: Vec<_> = runnable
            .iter()
            .map(|case| {
                let c = &c;
                s.spawn(move || {
                    let (Some(from), Some(to), Some(proto)) =
                        (place(c, &case.from), place(c, &case.to), proto_of(case))
                    else {
                        return (*case, Outcome::Error("unplaceable".into()), false);
                    };
                    let ns = ns_of(c, &from);
                    let dst = ip_of(c, &to);
                    let src = match &from {
                        Place::Ext(ip) => *ip,
                        _ => Ipv4Addr::UNSPECIFIED,
                    };
                    let wire = match proto {
                        Proto::Tcp(p) if !src.is_unspecified() => {
                            traffic::tcp_probe_from(&ns, src, dst, p, timeout)
                        }
                        Proto::Tcp(p) => traffic::tcp_probe(&ns, dst, p, timeout),
                        Proto::Udp(p) => traffic::udp_probe_from(&ns, src, dst, p, timeout),
                        Proto::Icmp => traffic::icmp_probe_from(&ns, src, dst, timeout),
                    };
                    let q = Query {
                        from: PeerSpec::parse(&case.from).expect("peer"),
                        to: PeerSpec::parse(&case.to).expect("peer"),
                        protocol: match proto {
                            Proto::Tcp(_) => Protocol::TCP,
                            Proto::Udp(_) => Protocol::UDP,
                            Proto::Icmp => Protocol::ICMP,
                        },
                        port: match proto {
                            Proto::Tcp(p) | Proto::Udp(p) => p,
                            Proto::Icmp => 8,
                        },
                        l7: None,
                    };
                    let traced = trace(&c.engine, &q).map(|t| t.allowed).unwrap_or(false);
                    (*case, wire, traced)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("probe")).collect()
    });
    let mut failures = Vec::new();
    for (case, wire, traced) in &results {
        let expected = case.expect == "allowed";
        let ok = wire.delivered() == *traced && *traced == expected;
        eprintln!(
            "[{group}] {} {:?}: expected {}, trace {}, wire {wire}",
            if ok { "ok  " } else { "FAIL" },
            case.name,
            case.expect,
            if *traced { "allowed" } else { "denied" },
        );
        if !ok {
            failures.push(case.name.clone());
        }
    }
    if !failures.is_empty() {
        for (node, a) in &c.agents {
            for e in a.events(0).iter().filter(|e| e.verdict == "dropped") {
                eprintln!("[{group}] {node} drop: {e:?}");
            }
        }
    }
    drop(c);
    assert!(
        failures.is_empty(),
        "[{group}] the wire, trace and the expected verdict disagree for: {failures:#?}"
    );
    assert!(!results.is_empty(), "[{group}] nothing was checked");
}

#[test]
fn wire_l3_endpoints() {
    check_group("l3-endpoints");
}

#[test]
fn wire_match_expressions() {
    check_group("match-expressions");
}

#[test]
fn wire_l4_ports() {
    check_group("l4-ports");
}

#[test]
fn wire_entities() {
    check_group("entities");
}

#[test]
fn wire_cidr() {
    check_group("cidr");
}

#[test]
fn wire_k8s_networkpolicy() {
    check_group("k8s-networkpolicy");
}
