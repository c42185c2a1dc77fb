//! `palisade lab`: the seed's hands-on lab on this machine, with real pods
//! and real traffic. It runs its own agent in-process (private node
//! namespace, pin root and state directory, so a running agent is never
//! disturbed), applies the seed's L3/L4 policies one at a time, and before
//! and after each one makes real TCP, UDP and ICMP connections, comparing
//! the wire with `policy trace`; then the seed's HTTP rules through the L7
//! proxy, a DNS-aware policy through the DNS proxy, and audit mode on its
//! own default-deny. `--flows-out` and `--manifests-out` keep what the
//! agent recorded and the cluster and policies behind it, for offline
//! replay (`observe`, `servicemap`, `policy impact`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use palisade_agent::api::{FlowEvent, PodRunSpec, PortSpec};
use palisade_agent::config::PodCidr;
use palisade_agent::traffic::{self, Outcome, Servers};
use palisade_agent::{Agent, AgentConfig};
use palisade_datapath::netns::{self, PodSpec};
use palisade_flow::flow::{Flow, Verdict};
use palisade_flow::printer::{Format, render};
use palisade_policy::api::Protocol;
use palisade_policy::cluster::ClusterState;
use palisade_policy::trace::{PeerSpec, Query, TraceResult, trace};

use super::live;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Needs root. Creates (and always removes, also on Ctrl-C) a private node \
network namespace pal-lab-<pid>, pods default/{frontend,backend,database} and prod/{frontend,backend}, \
a \"world\" namespace with 203.0.113.10, 20.1.1.1, 10.1.2.3 and 10.96.0.10, and the pin root \
/sys/fs/bpf/palisade-lab-<pid>. Exit status 1 if the wire ever disagrees with `policy trace`.\n\n\
Examples:\n  sudo palisade lab\n  make lab\n  sudo palisade lab --flows-out lab-flows.json --manifests-out lab/\n  palisade policy impact -f lab/cluster.yaml -f lab/policies/backend-ccnp.yaml --flows lab-flows.json"
)]
pub struct LabArgs {
    /// Also print the live kernel policy map of default/backend after each step.
    #[arg(long)]
    pub show_maps: bool,
    /// Probe timeout in milliseconds (a dropped connection is one that gets no answer in time).
    #[arg(long, default_value_t = 350)]
    pub timeout_ms: u64,
    /// At the end, write every flow the lab's agent recorded to FILE, one
    /// Hubble `GetFlowsResponse` per line (what `palisade observe -o jsonpb`
    /// prints), for `observe --input-file`, `servicemap` and `policy impact`.
    #[arg(long, value_name = "FILE")]
    pub flows_out: Option<PathBuf>,
    /// At the end, write the lab's cluster (namespaces, node, pods with
    /// their addresses) to DIR/cluster.yaml and every policy it applied to
    /// DIR/policies/, so the recorded flows can be replayed offline
    /// (`palisade policy impact -f DIR/cluster.yaml -f DIR/policies/X.yaml`).
    #[arg(long, value_name = "DIR")]
    pub manifests_out: Option<PathBuf>,
}

const NODE: &str = "lab-node";
const WORLD: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CIDR_ALLOWED: Ipv4Addr = Ipv4Addr::new(20, 1, 1, 1);
const CIDR_IN_SET: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
const CIDR_EXCEPT: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

#[derive(Clone, Copy, Debug)]
enum Peer {
    Pod(&'static str),
    Ext(Ipv4Addr),
    Host,
}

#[derive(Clone, Copy, Debug)]
enum Proto {
    Tcp(u16),
    Udp(u16),
    Icmp,
}

impl Proto {
    fn text(self) -> String {
        match self {
            Proto::Tcp(p) => format!("{p}/TCP"),
            Proto::Udp(p) => format!("{p}/UDP"),
            Proto::Icmp => "ICMP echo".into(),
        }
    }
    fn proto_num(self) -> u8 {
        match self {
            Proto::Tcp(_) => 6,
            Proto::Udp(_) => 17,
            Proto::Icmp => 1,
        }
    }
    fn port(self) -> u16 {
        match self {
            Proto::Tcp(p) | Proto::Udp(p) => p,
            Proto::Icmp => 8,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Probe {
    from: Peer,
    to: Peer,
    proto: Proto,
}

fn p(from: Peer, to: Peer, proto: Proto) -> Probe {
    Probe { from, to, proto }
}

use Peer::{Ext, Host, Pod};
use Proto::{Icmp, Tcp, Udp};

const FE: Peer = Pod("default/frontend");
const BE: Peer = Pod("default/backend");
const DB: Peer = Pod("default/database");
const PFE: Peer = Pod("prod/frontend");
const PBE: Peer = Pod("prod/backend");

struct Step {
    title: &'static str,
    about: &'static str,
    file: &'static str,
    manifest: &'static str,
    probes: Vec<Probe>,
}

fn steps() -> Vec<Step> {
    vec![
        Step {
            title: "layer3-ingress-only",
            about: "L3: backend (role=backend) admits only role=frontend; CNP fromEndpoints match the policy's namespace only",
            file: "layer3-ingress-only.yaml",
            manifest: r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: layer3-ingress-only
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      role: backend
  ingress:
    - fromEndpoints:
        - matchLabels:
            role: frontend
"#,
            probes: vec![
                p(FE, BE, Tcp(80)),
                p(FE, BE, Tcp(9999)),
                p(FE, BE, Udp(53)),
                p(FE, BE, Icmp),
                p(DB, BE, Tcp(80)),
                p(PFE, BE, Tcp(80)),
                p(Ext(WORLD), BE, Tcp(80)),
                p(BE, DB, Tcp(3306)),
            ],
        },
        Step {
            title: "layer4-example",
            about: "L4: egress only to TCP port 80, any destination (selector adapted: app=myService -> app=frontend)",
            file: "layer4-example.yaml",
            manifest: r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: layer4-example
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      app: frontend
  egress:
    - toPorts:
        - ports:
            - port: "80"
              protocol: TCP
"#,
            probes: vec![
                p(FE, BE, Tcp(80)),
                p(FE, BE, Tcp(9999)),
                p(FE, BE, Udp(53)),
                p(FE, BE, Icmp),
                p(FE, DB, Tcp(3306)),
                p(FE, Ext(WORLD), Tcp(80)),
                p(PFE, PBE, Tcp(9999)),
            ],
        },
        Step {
            title: "example-policy (L3/L4 part)",
            about: "frontend -> myapp on 80/TCP, myapp -> database on 3306/TCP (its HTTP GET /public rule comes with the L7 proxy)",
            file: "example-policy.yaml",
            manifest: r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: example-policy
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      app: myapp
  ingress:
    - fromEndpoints:
        - matchLabels:
            app: frontend
      toPorts:
        - ports:
            - port: "80"
              protocol: TCP
  egress:
    - toEndpoints:
        - matchLabels:
            app: database
      toPorts:
        - ports:
            - port: "3306"
              protocol: TCP
"#,
            probes: vec![
                p(FE, BE, Tcp(80)),
                p(FE, BE, Tcp(9999)),
                p(DB, BE, Tcp(80)),
                p(BE, DB, Tcp(3306)),
                p(BE, DB, Tcp(9999)),
                p(BE, FE, Tcp(80)),
                p(BE, Ext(WORLD), Tcp(80)),
            ],
        },
        Step {
            title: "layer3-egress-cidr",
            about: "CIDR: backend may reach 20.1.1.1/32 and 10.0.0.0/8 except 10.96.0.0/12 (addresses live in the lab's world namespace); CIDR rules never select pods",
            file: "layer3-egress-cidr.yaml",
            manifest: r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: layer3-egress-cidr
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      role: backend
  egress:
    - toCIDR:
        - "20.1.1.1/32"
    - toCIDRSet:
        - cidr: "10.0.0.0/8"
          except:
            - "10.96.0.0/12"
"#,
            probes: vec![
                p(BE, Ext(CIDR_ALLOWED), Tcp(80)),
                p(BE, Ext(CIDR_IN_SET), Tcp(80)),
                p(BE, Ext(CIDR_IN_SET), Udp(53)),
                p(BE, Ext(CIDR_EXCEPT), Tcp(80)),
                p(BE, Ext(WORLD), Tcp(80)),
                p(BE, DB, Tcp(3306)),
                p(BE, Host, Tcp(9999)),
            ],
        },
        Step {
            title: "entities",
            about: "Entities: backend admits world on 80/TCP and the host; it may reach only the cluster (pods, host), not world",
            file: "entities.yaml",
            manifest: r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: entities-example
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      role: backend
  ingress:
    - fromEntities:
        - world
      toPorts:
        - ports:
            - port: "80"
              protocol: TCP
    - fromEntities:
        - host
  egress:
    - toEntities:
        - cluster
"#,
            probes: vec![
                p(Ext(WORLD), BE, Tcp(80)),
                p(Ext(WORLD), BE, Tcp(9999)),
                p(Host, BE, Tcp(9999)),
                p(FE, BE, Tcp(80)),
                p(BE, DB, Tcp(3306)),
                p(BE, Host, Tcp(9999)),
                p(BE, Ext(WORLD), Tcp(80)),
            ],
        },
        Step {
            title: "default-deny",
            about: "Default deny: every pod of namespace default denies all ingress (ingress: [{}]); prod is untouched",
            file: "default-deny.yaml",
            manifest: r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: default-deny
  namespace: default
spec:
  endpointSelector: {}
  ingress:
    - {}
"#,
            probes: vec![
                p(FE, BE, Tcp(80)),
                p(DB, BE, Tcp(80)),
                p(BE, DB, Tcp(3306)),
                p(PFE, BE, Tcp(80)),
                p(PFE, PBE, Tcp(80)),
                p(FE, PBE, Udp(53)),
                p(FE, Ext(WORLD), Tcp(80)),
            ],
        },
        Step {
            title: "scope: CiliumNetworkPolicy",
            about: "Namespace scope: in default, role=backend admits role=frontend of default only; prod/backend is not selected",
            file: "backend-cnp.yaml",
            manifest: r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: backend-from-frontend
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      role: backend
  ingress:
    - fromEndpoints:
        - matchLabels:
            role: frontend
"#,
            probes: vec![
                p(FE, BE, Tcp(80)),
                p(PFE, BE, Tcp(80)),
                p(PFE, PBE, Tcp(80)),
                p(DB, PBE, Tcp(80)),
            ],
        },
        Step {
            title: "scope: CiliumClusterwideNetworkPolicy",
            about: "Cluster scope: the same rule as a CCNP selects role=backend in every namespace and admits role=frontend from every namespace",
            file: "backend-ccnp.yaml",
            manifest: r#"apiVersion: "cilium.io/v2"
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: backend-from-frontend
spec:
  endpointSelector:
    matchLabels:
      role: backend
  ingress:
    - fromEndpoints:
        - matchLabels:
            role: frontend
"#,
            probes: vec![
                p(FE, BE, Tcp(80)),
                p(PFE, BE, Tcp(80)),
                p(PFE, PBE, Tcp(80)),
                p(DB, PBE, Tcp(80)),
            ],
        },
    ]
}

/// The lab's world: everything it created, removed on drop (also on
/// panic); the agent's purge removes the node namespace, every namespace
/// named after it and the pin root.
struct LabGuard {
    agent: Option<Agent>,
    servers: Vec<Servers>,
    node_netns: String,
    pin_root: PathBuf,
    state_dir: PathBuf,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        self.servers.clear();
        if let Some(a) = self.agent.take() {
            a.destroy();
        }
        palisade_agent::purge(&self.node_netns, &self.pin_root);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

struct World {
    pods: BTreeMap<&'static str, (String, Ipv4Addr)>,
    ext_netns: String,
    node_netns: String,
    node_ip: Ipv4Addr,
}

impl World {
    fn netns(&self, peer: Peer) -> &str {
        match peer {
            Pod(k) => self.pods.get(k).map(|(n, _)| n.as_str()).unwrap_or(""),
            Ext(_) => &self.ext_netns,
            Host => &self.node_netns,
        }
    }
    fn ip(&self, peer: Peer) -> Ipv4Addr {
        match peer {
            Pod(k) => self
                .pods
                .get(k)
                .map(|(_, ip)| *ip)
                .unwrap_or(Ipv4Addr::UNSPECIFIED),
            Ext(ip) => ip,
            Host => self.node_ip,
        }
    }
    fn spec(&self, peer: Peer) -> PeerSpec {
        match peer {
            Pod(k) => PeerSpec::Pod(k.to_string()),
            Ext(ip) => PeerSpec::Ip {
                ip: ip.into(),
                dns_name: None,
            },
            Host => PeerSpec::Node(NODE.to_string()),
        }
    }
    fn name(&self, peer: Peer) -> String {
        match peer {
            Pod(k) => k.to_string(),
            Ext(ip) if ip == WORLD => format!("world {ip}"),
            Ext(ip) => format!("ext {ip}"),
            Host => format!("host {}", self.node_ip),
        }
    }
}

fn probe_wire(w: &World, pr: &Probe, timeout: Duration) -> Outcome {
    let ns = w.netns(pr.from);
    let dst = w.ip(pr.to);
    match pr.proto {
        Tcp(port) => traffic::tcp_probe(ns, dst, port, timeout),
        Udp(port) => traffic::udp_probe(ns, dst, port, timeout),
        Icmp => traffic::icmp_probe(ns, dst, timeout),
    }
}

fn trace_of(agent: &Agent, w: &World, pr: &Probe) -> Result<TraceResult, String> {
    let q = Query {
        from: w.spec(pr.from),
        to: w.spec(pr.to),
        protocol: match pr.proto {
            Tcp(_) => Protocol::TCP,
            Udp(_) => Protocol::UDP,
            Icmp => Protocol::ICMP,
        },
        port: pr.proto.port(),
        l7: None,
    };
    agent.with_engine(|e| trace(e, &q))
}

fn trace_rule(t: &TraceResult) -> String {
    if t.allowed {
        let mut rules: Vec<String> = t
            .directions
            .iter()
            .flat_map(|d| d.rules.iter().map(|r| r.to_string()))
            .collect();
        rules.dedup();
        if rules.is_empty() {
            "no policy selects it (default allow)".into()
        } else {
            rules.join("; ")
        }
    } else {
        t.directions
            .iter()
            .find(|d| !d.allowed)
            .map(|d| {
                let why = d.explanation.split(';').next().unwrap_or("").to_string();
                format!("{} {}: {why}", d.endpoint, d.direction)
            })
            .unwrap_or_default()
    }
}

struct Row {
    probe: Probe,
    before: Option<Outcome>,
    expected: Option<bool>,
    wire: Outcome,
    rule: String,
    kernel: String,
    mismatch: bool,
}

fn run_probes(w: &World, probes: &[Probe], timeout: Duration) -> Vec<Outcome> {
    std::thread::scope(|s| {
        let hs: Vec<_> = probes
            .iter()
            .map(|pr| s.spawn(move || probe_wire(w, pr, timeout)))
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or(Outcome::Error("probe thread panicked".into()))
            })
            .collect()
    })
}

fn kernel_event(events: &[FlowEvent], w: &World, pr: &Probe) -> String {
    let src = w.ip(pr.from).to_string();
    let dst = w.ip(pr.to).to_string();
    events
        .iter()
        .rev()
        .find(|e| {
            e.verdict == "dropped"
                && e.proto == pr.proto.proto_num()
                && e.src.split(':').next() == Some(src.as_str())
                && e.dst.split(':').next() == Some(dst.as_str())
                && e.dport == pr.proto.port()
        })
        .map(|e| {
            format!(
                "{} {} drop ({}): {}",
                e.endpoint, e.direction, e.drop_reason, e.rule
            )
        })
        .unwrap_or_else(|| "-".into())
}

fn mark(ok: bool) -> &'static str {
    if ok { "allowed" } else { "DENIED" }
}

fn print_rows(w: &World, rows: &[Row], with_before: bool) {
    let mut headers = vec!["FROM", "TO", "PORT"];
    if with_before {
        headers.push("BEFORE (wire)");
    }
    headers.extend([
        "EXPECTED (trace)",
        "ON THE WIRE",
        "RULE (trace)",
        "KERNEL DROP EVENT",
    ]);
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut v = vec![
                w.name(r.probe.from),
                w.name(r.probe.to),
                r.probe.proto.text(),
            ];
            if with_before {
                v.push(
                    r.before
                        .as_ref()
                        .map(|o| mark(o.delivered()).to_string())
                        .unwrap_or_default(),
                );
            }
            v.push(
                r.expected
                    .map(|e| mark(e).to_string())
                    .unwrap_or_else(|| "?".into()),
            );
            v.push(format!(
                "{}{}",
                match &r.wire {
                    Outcome::Error(e) => format!("error: {e}"),
                    o => mark(o.delivered()).to_string(),
                },
                if r.mismatch { "  <<< MISMATCH" } else { "" }
            ));
            v.push(r.rule.clone());
            v.push(r.kernel.clone());
            v
        })
        .collect();
    live::print_table(&headers, &table);
}

fn setup(guard: &mut LabGuard, agent: &Agent) -> anyhow::Result<World> {
    let cfg = agent.config().clone();
    let mut pods = BTreeMap::new();
    let defs: [(&'static str, &[(&str, &str)]); 5] = [
        (
            "default/frontend",
            &[("app", "frontend"), ("role", "frontend")],
        ),
        ("default/backend", &[("app", "myapp"), ("role", "backend")]),
        ("default/database", &[("app", "database")]),
        (
            "prod/frontend",
            &[("app", "frontend"), ("role", "frontend")],
        ),
        ("prod/backend", &[("app", "myapp"), ("role", "backend")]),
    ];
    for (key, labels) in defs {
        let (ns, name) = key.split_once('/').context("pod key")?;
        let info = agent.run_pod(PodRunSpec {
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: vec![
                PortSpec::parse("http:80/TCP").map_err(anyhow::Error::msg)?,
                PortSpec::parse("mysql:3306/TCP").map_err(anyhow::Error::msg)?,
                PortSpec::parse("dns:53/UDP").map_err(anyhow::Error::msg)?,
            ],
            ip: None,
            service_account: None,
        })?;
        guard
            .servers
            .push(Servers::start(&info.netns, &[80, 3306, 9999], &[53])?);
        pods.insert(key, (info.netns, info.ip));
    }
    // The world: a namespace outside the cluster, routed through the node namespace.
    let ext_netns = format!("{}-world", cfg.node_netns);
    netns::create_pod(
        Some(&cfg.node_netns),
        &PodSpec {
            netns: ext_netns.clone(),
            host_ifname: "world0".into(),
            ip: WORLD,
            host_mac: [0x02, 0xee, 0, 0, 0, 1],
            pod_mac: [0x02, 0xef, 0, 0, 0, 1],
        },
    )?;
    for extra in [CIDR_ALLOWED, CIDR_IN_SET, CIDR_EXCEPT] {
        netns::ip(&[
            "-n",
            &ext_netns,
            "addr",
            "add",
            &format!("{extra}/32"),
            "dev",
            "eth0",
        ])?;
        netns::ip(&[
            "-n",
            &cfg.node_netns,
            "route",
            "replace",
            &format!("{extra}/32"),
            "dev",
            "world0",
            "scope",
            "link",
        ])?;
        netns::ip(&[
            "-n",
            &cfg.node_netns,
            "neigh",
            "replace",
            &extra.to_string(),
            "lladdr",
            "02:ef:00:00:00:01",
            "dev",
            "world0",
            "nud",
            "permanent",
        ])?;
    }
    guard.servers.push(Servers::start_on(
        &ext_netns,
        &[WORLD, CIDR_ALLOWED, CIDR_IN_SET, CIDR_EXCEPT],
        &[80, 9999],
        &[53],
    )?);
    guard
        .servers
        .push(Servers::start(&cfg.node_netns, &[9999], &[])?);
    Ok(World {
        pods,
        ext_netns,
        node_netns: cfg.node_netns.clone(),
        node_ip: cfg.node_address,
    })
}

pub fn run(a: LabArgs) -> anyhow::Result<ExitCode> {
    if !live::is_root() {
        bail!(
            "palisade lab needs root: it creates network namespaces and loads eBPF programs. Run `sudo palisade lab` (or `sudo make lab`)."
        );
    }
    live::init_logs("warn");
    live::install_stop_signals();
    let started = Instant::now();
    let timeout = Duration::from_millis(a.timeout_ms.clamp(50, 5000));
    let pid = std::process::id();
    let node_netns = format!("pal-lab-{pid}");
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/palisade-lab-{pid}"));
    let state_dir = std::env::temp_dir().join(format!("palisade-lab-{pid}"));
    let mut guard = LabGuard {
        agent: None,
        servers: Vec::new(),
        node_netns: node_netns.clone(),
        pin_root: pin_root.clone(),
        state_dir: state_dir.clone(),
    };
    let pod_cidr = PodCidr::parse("10.210.0.0/24")?;
    let cfg = AgentConfig {
        state_dir,
        manifests_dir: None,
        socket: None,
        pin_root,
        node_netns,
        node_name: NODE.into(),
        node_address: pod_cidr.gateway(),
        pod_cidr,
        ..AgentConfig::default()
    };
    println!(
        "Palisade lab: the seed's Cilium policies, enforced by eBPF on real pods with real traffic."
    );
    println!(
        "Private node namespace {} (node {NODE}, {}), pod CIDR {}, pin root {}: the machine's root namespace and any running agent are untouched.\n",
        cfg.node_netns,
        cfg.node_address,
        cfg.pod_cidr,
        cfg.pin_root.display()
    );
    let agent = Agent::start(cfg).context("starting the lab's agent")?;
    let world = setup(&mut guard, &agent)?;
    println!("Pods:");
    for (k, (_, ip)) in &world.pods {
        println!("  {k:<18} {ip}");
    }
    println!(
        "  world namespace    {WORLD} (world), {CIDR_ALLOWED}, {CIDR_IN_SET}, {CIDR_EXCEPT} (outside the cluster)"
    );
    println!("  host (node)        {}\n", world.node_ip);
    let mut mismatches = 0usize;
    let mut total = 0usize;

    // Step 0: no policy at all.
    let baseline = vec![
        p(FE, BE, Tcp(80)),
        p(FE, BE, Udp(53)),
        p(FE, BE, Icmp),
        p(DB, BE, Tcp(80)),
        p(BE, DB, Tcp(3306)),
        p(PFE, BE, Tcp(80)),
        p(BE, Ext(WORLD), Tcp(80)),
        p(Ext(WORLD), BE, Tcp(80)),
        p(BE, Host, Tcp(9999)),
    ];
    println!("== Step 0: no policy: every connection is allowed");
    let rows = measure(&agent, &world, &baseline, None, timeout);
    total += rows.len();
    mismatches += rows.iter().filter(|r| r.mismatch).count();
    print_rows(&world, &rows, false);

    let steps = steps();
    let mut interrupted = false;
    for (i, step) in steps.iter().enumerate() {
        if live::stopping() {
            interrupted = true;
            break;
        }
        println!("\n== Step {}: {}\n   {}", i + 1, step.title, step.about);
        let before_rows = measure(&agent, &world, &step.probes, None, timeout);
        mismatches += before_rows.iter().filter(|r| r.mismatch).count();
        total += before_rows.len();
        let t0 = Instant::now();
        agent
            .apply_text(step.file, step.manifest)
            .map_err(|e| anyhow::anyhow!("{e}: {}", e.diagnostics().join("; ")))?;
        println!(
            "   applied {} ({} ms to the kernel maps)",
            step.file,
            t0.elapsed().as_millis()
        );
        let befores: Vec<Outcome> = before_rows.into_iter().map(|r| r.wire).collect();
        let rows = measure(&agent, &world, &step.probes, Some(befores), timeout);
        total += rows.len();
        mismatches += rows.iter().filter(|r| r.mismatch).count();
        print_rows(&world, &rows, true);
        if a.show_maps {
            show_map(&agent, "default/backend");
        }
        agent
            .delete_text(step.file, step.manifest)
            .map_err(|e| anyhow::anyhow!("deleting {}: {e}", step.file))?;
    }
    if !interrupted {
        println!(
            "\nLive kernel policy of default/backend with example-policy (what `palisade bpf policy get` shows):"
        );
        let s = &steps[2];
        agent
            .apply_text(s.file, s.manifest)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        show_map(&agent, "default/backend");
        agent
            .delete_text(s.file, s.manifest)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if !interrupted && !live::stopping() {
        let (t, m) = l7_section(&agent, &world, timeout)?;
        total += t;
        mismatches += m;
    }
    if !interrupted && !live::stopping() {
        let (t, m) = dns_section(&agent, &world, timeout)?;
        total += t;
        mismatches += m;
    }
    if !interrupted && !live::stopping() {
        let (t, m) = audit_section(&agent, &world, timeout)?;
        total += t;
        mismatches += m;
    }
    write_outputs(&a, &agent)?;
    guard.agent = Some(agent);
    drop(guard);
    if interrupted || live::stopping() {
        eprintln!("\ninterrupted: everything the lab created was removed");
        return Ok(ExitCode::from(130));
    }
    println!(
        "\n{total} real connections checked against `policy trace` in {:.1} s: {}.",
        started.elapsed().as_secs_f64(),
        if mismatches == 0 {
            "the wire agreed every time".to_string()
        } else {
            format!("{mismatches} DISAGREED")
        }
    );
    println!(
        "Still to come in this lab: gRPC and Kafka rules (the agent's L7 proxies enforce them; see crates/palisade-proxy/tests/grpc.rs and kafka.rs), and a learned name expiring with its TTL."
    );
    println!("Cleaned up: pods, world and node namespaces, pinned maps and links.");
    Ok(if mismatches == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: the wire disagreed with `policy trace` {mismatches} time(s)");
        ExitCode::from(1)
    })
}

fn measure(
    agent: &Agent,
    w: &World,
    probes: &[Probe],
    befores: Option<Vec<Outcome>>,
    timeout: Duration,
) -> Vec<Row> {
    let seq = agent.events(0).last().map_or(0, |e| e.seq);
    let outcomes = run_probes(w, probes, timeout);
    // let the event reader drain what the probes produced
    let _ = traffic::wait_until(Duration::from_millis(300), || {
        agent.events(seq).len() >= outcomes.iter().filter(|o| !o.delivered()).count()
    });
    let events = agent.events(seq);
    probes
        .iter()
        .zip(outcomes)
        .enumerate()
        .map(|(i, (pr, wire))| {
            let t = trace_of(agent, w, pr);
            let (expected, rule) = match &t {
                Ok(t) => (Some(t.allowed), trace_rule(t)),
                Err(e) => (None, format!("trace error: {e}")),
            };
            let mismatch = expected != Some(wire.delivered());
            Row {
                probe: *pr,
                before: befores.as_ref().and_then(|b| b.get(i).cloned()),
                expected,
                kernel: if wire.delivered() {
                    "-".into()
                } else {
                    kernel_event(&events, w, pr)
                },
                wire,
                rule,
                mismatch,
            }
        })
        .collect()
}

fn show_map(agent: &Agent, pod: &str) {
    match agent.bpf_policy(pod) {
        Ok(m) => {
            let rows: Vec<Vec<String>> = m
                .entries
                .iter()
                .map(|e| {
                    vec![
                        e.policy.clone(),
                        e.direction.clone(),
                        if e.identity == 0 {
                            "ANY".into()
                        } else {
                            format!("{} ({})", short_labels(&e.labels), e.identity)
                        },
                        e.port.clone(),
                        format!("{:#010x}", e.cookie),
                        e.rules.join("; "),
                    ]
                })
                .collect();
            live::print_table(
                &[
                    "POLICY",
                    "DIRECTION",
                    "LABELS (IDENTITY)",
                    "PORT/PROTO",
                    "COOKIE",
                    "RULES",
                ],
                &rows,
            );
        }
        Err(e) => eprintln!("bpf policy get {pod}: {e}"),
    }
}

fn short_labels(l: &str) -> String {
    l.split(' ')
        .filter(|x| {
            !x.contains("io.cilium.k8s.policy") && !x.contains("io.kubernetes.pod.namespace")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

const EXAMPLE_POLICY_L7: &str = r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: example-policy
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      app: myapp
  ingress:
    - fromEndpoints:
        - matchLabels:
            app: frontend
      toPorts:
        - ports:
            - port: "80"
              protocol: TCP
          rules:
            http:
              - method: "GET"
                path: "/public"
  egress:
    - toEndpoints:
        - matchLabels:
            app: database
      toPorts:
        - ports:
            - port: "3306"
              protocol: TCP
"#;

const LAYER7_EXAMPLE: &str = r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: layer7-example
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      app: myService
  ingress:
    - toPorts:
        - ports:
            - port: "80"
              protocol: TCP
          rules:
            http:
              - method: GET
                path: "/path1$"
              - method: PUT
                path: "/path2$"
                headers:
                  - "X-My-Header: true"
"#;

/// A manifest file, its text, and requests (from, method, path, headers).
type L7Case = (&'static str, &'static str, &'static [L7Req]);
type L7Req = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

/// The seed's L7 HTTP examples through the agent's L7 proxy: real HTTP
/// from pods, the proxy's verdict and deciding rule (from the agent's L7
/// flows) next to `policy trace`'s answer for the same request.
fn l7_section(agent: &Agent, w: &World, timeout: Duration) -> anyhow::Result<(usize, usize)> {
    use palisade_policy::l7::{HttpRequest, L7Request};
    println!("\n== L7: the seed's HTTP rules, enforced request by request by the agent's L7 proxy");
    agent
        .start_l7_proxy(palisade_proxy::ProxyConfig::default())
        .context("starting the L7 proxy")?;
    if let Some(p) = agent.status().l7_proxy {
        println!(
            "   the HTTP proxy runs as its own process (`palisade proxy`, pid {}): an agent restart does not interrupt L7 enforcement, and while no proxy takes the traffic it is dropped, never let through unfiltered",
            p.pid
        );
    }
    let mut servers = Vec::new();
    let mut ips = BTreeMap::new();
    for (ns, name, app) in [
        ("default", "web", "myapp"),
        ("default", "service", "myService"),
    ] {
        let info = agent.run_pod(PodRunSpec {
            namespace: ns.into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ports: vec![PortSpec::parse("http:80/TCP").map_err(anyhow::Error::msg)?],
            ip: None,
            service_account: None,
        })?;
        servers.push(traffic::HttpServer::start(&info.netns, 80)?);
        println!(
            "   pod {ns}/{name:<8} {} (app={app}, an HTTP server on 80)",
            info.ip
        );
        ips.insert(name, info.ip);
    }
    let cases: [L7Case; 2] = [
        (
            "example-policy.yaml",
            EXAMPLE_POLICY_L7,
            &[
                ("default/frontend", "GET", "/public", &[]),
                ("default/frontend", "POST", "/public", &[]),
                ("default/frontend", "GET", "/private", &[]),
                ("default/database", "GET", "/public", &[]),
            ],
        ),
        (
            "layer7-example.yaml",
            LAYER7_EXAMPLE,
            &[
                ("default/frontend", "GET", "/path1", &[]),
                ("default/frontend", "PUT", "/path2", &["X-My-Header: true"]),
                ("default/frontend", "PUT", "/path2", &[]),
                ("default/frontend", "GET", "/path2", &[]),
            ],
        ),
    ];
    let (mut total, mut mismatches) = (0, 0);
    for (file, manifest, requests) in cases {
        let target = if file.starts_with("example") {
            "web"
        } else {
            "service"
        };
        let ip = ips[target];
        agent
            .apply_text(file, manifest)
            .map_err(|e| anyhow::anyhow!("{e}: {}", e.diagnostics().join("; ")))?;
        println!("\n   applied {file}: requests to default/{target} ({ip}:80)");
        for (from, method, path, headers) in requests {
            let ns = &w.pods[from].0;
            let seq = agent.flows().page(None, Some(0)).next;
            let wire = traffic::http_request(ns, ip, 80, method, path, headers, timeout);
            let q = Query {
                from: PeerSpec::Pod(from.to_string()),
                to: PeerSpec::Pod(format!("default/{target}")),
                protocol: Protocol::TCP,
                port: 80,
                l7: Some(L7Request::Http(HttpRequest {
                    method: method.to_string(),
                    path: path.to_string(),
                    host: None,
                    headers: headers
                        .iter()
                        .filter_map(|h| h.split_once(':'))
                        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                        .collect(),
                })),
            };
            let tr = agent
                .with_engine(|e| trace(e, &q))
                .map_err(anyhow::Error::msg)?;
            // The proxy's L7 flow for this request, with its deciding rule.
            let mut proxy_rule = String::new();
            let _ = traffic::wait_until(Duration::from_millis(500), || {
                let page = agent.flows().page(Some(seq), None);
                proxy_rule = page
                    .flows
                    .iter()
                    .filter_map(|r| r.flow.as_ref())
                    .rfind(|f| f.l7.is_some())
                    .map(|f| {
                        let rules: Vec<String> =
                            f.extensions.iter().flat_map(|e| e.rules.clone()).collect();
                        format!(
                            "{} by {}",
                            f.verdict.as_str(),
                            if rules.is_empty() {
                                "-".into()
                            } else {
                                rules.join("; ")
                            }
                        )
                    })
                    .unwrap_or_default();
                !proxy_rule.is_empty() || wire.is_err()
            });
            let (wire_text, delivered) = match &wire {
                Ok(a) => (format!("{} {}", a.status, a.body.trim()), a.status == 200),
                Err(_) => ("no HTTP answer (dropped at L3/L4)".to_string(), false),
            };
            let agree = delivered == tr.allowed;
            total += 1;
            if !agree {
                mismatches += 1;
            }
            let hdr = if headers.is_empty() {
                String::new()
            } else {
                format!(" [{}]", headers.join(", "))
            };
            println!(
                "   {} {from:<17} {method:<4} {path:<9}{hdr}\n       wire: {wire_text}\n       proxy: {}\n       trace: {} ({})",
                if agree { "ok      " } else { "MISMATCH" },
                if proxy_rule.is_empty() {
                    "-".to_string()
                } else {
                    proxy_rule
                },
                if tr.allowed { "allowed" } else { "denied" },
                trace_rule(&tr)
            );
        }
        agent
            .delete_text(file, manifest)
            .map_err(|e| anyhow::anyhow!("deleting {file}: {e}"))?;
    }
    drop(servers);
    Ok((total, mismatches))
}

const DNS_POLICY: &str = r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: frontend-fqdn
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      app: frontend
  egress:
    - toEndpoints:
        - matchLabels:
            io.kubernetes.pod.namespace: kube-system
            k8s-app: kube-dns
      toPorts:
        - ports:
            - port: "53"
              protocol: UDP
          rules:
            dns:
              - matchPattern: "*.example.com"
    - toFQDNs:
        - matchName: api.example.com
      toPorts:
        - ports:
            - port: "80"
              protocol: TCP
"#;

/// DNS-aware policy: a dnsmasq pod, a CNP with a DNS rule and `toFQDNs`;
/// the world address is denied until frontend resolves the name through
/// the agent's DNS proxy, then allowed on the first connection; a name the
/// DNS rule does not allow is REFUSED; the FQDN cache as `palisade fqdn
/// cache list` shows it.
fn dns_section(agent: &Agent, w: &World, timeout: Duration) -> anyhow::Result<(usize, usize)> {
    use palisade_proxy::dns::wire::{RCODE_REFUSED, Rdata};
    println!(
        "\n== DNS: toFQDNs through the agent's DNS proxy (api.example.com is {WORLD}, the world namespace)"
    );
    let info = agent.run_pod(PodRunSpec {
        namespace: "kube-system".into(),
        name: "coredns".into(),
        labels: [("k8s-app".to_string(), "kube-dns".to_string())].into(),
        ports: vec![PortSpec::parse("dns:53/UDP").map_err(anyhow::Error::msg)?],
        ip: None,
        service_account: None,
    })?;
    let hosts = format!("{WORLD} api.example.com\n{CIDR_ALLOWED} evil.example.net\n");
    let _dnsmasq = match traffic::Dnsmasq::start(&info.netns, info.ip, &hosts, "api.example.com") {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "   skipped: dnsmasq does not run ({e}); install the Debian package dnsmasq-base"
            );
            return Ok((0, 0));
        }
        Err(e) => bail!("{e}"),
    };
    println!(
        "   pod kube-system/coredns {} (k8s-app=kube-dns, dnsmasq)",
        info.ip
    );
    agent
        .apply_text("frontend-fqdn.yaml", DNS_POLICY)
        .map_err(|e| anyhow::anyhow!("{e}: {}", e.diagnostics().join("; ")))?;
    println!(
        "   applied frontend-fqdn.yaml: DNS rule *.example.com on 53/UDP to kube-dns, toFQDNs api.example.com on 80/TCP"
    );
    let probe = [p(FE, Ext(WORLD), Tcp(80))];
    let (mut total, mut mismatches) = (0, 0);
    println!("   before resolving api.example.com:");
    let before = measure(agent, w, &probe, None, timeout);
    total += before.len();
    mismatches += before.iter().filter(|r| r.mismatch).count();
    print_rows(w, &before, false);

    let fe_ns = &w.pods["default/frontend"].0;
    let seq = agent.flows().page(None, Some(0)).next;
    let t0 = Instant::now();
    let answer = traffic::dns_query(fe_ns, info.ip, "api.example.com", 0x4242)?;
    let took = t0.elapsed();
    let ips: Vec<String> = answer
        .answers
        .iter()
        .filter_map(|r| match r.data {
            Rdata::A(a) => Some(a.to_string()),
            _ => None,
        })
        .collect();
    println!(
        "   default/frontend resolves api.example.com via {}: {} in {} ms (learned and written to the kernel maps before the answer was released)",
        info.ip,
        ips.join(", "),
        took.as_millis()
    );
    println!("   right after the answer (the first connection):");
    let befores: Vec<Outcome> = before.into_iter().map(|r| r.wire).collect();
    let after = measure(agent, w, &probe, Some(befores), timeout);
    total += after.len();
    mismatches += after.iter().filter(|r| r.mismatch).count();
    print_rows(w, &after, true);

    let refused = traffic::dns_query(fe_ns, info.ip, "evil.example.net", 7)?;
    let refused_ok = refused.header.rcode == RCODE_REFUSED;
    total += 1;
    if !refused_ok {
        mismatches += 1;
    }
    println!(
        "   {} default/frontend resolves evil.example.net: rcode {} (the DNS rule allows *.example.com only; expected REFUSED)",
        if refused_ok { "ok      " } else { "MISMATCH" },
        palisade_proxy::dns::record::rcode_name(refused.header.rcode)
    );
    let _ = traffic::wait_until(Duration::from_millis(500), || {
        agent
            .flows()
            .page(Some(seq), None)
            .flows
            .iter()
            .filter(|r| {
                r.flow
                    .as_ref()
                    .is_some_and(|f| f.l7.as_ref().is_some_and(|l| l.dns.is_some()))
            })
            .count()
            >= 2
    });
    println!("   the DNS proxy's L7 flows:");
    for f in agent
        .flows()
        .page(Some(seq), None)
        .flows
        .iter()
        .filter_map(|r| r.flow.as_ref())
        .filter(|f| f.l7.as_ref().is_some_and(|l| l.dns.is_some()))
    {
        let rules: Vec<String> = f.extensions.iter().flat_map(|e| e.rules.clone()).collect();
        let dns = f.l7.as_ref().and_then(|l| l.dns.as_ref());
        println!(
            "     {} {} {}",
            dns.map_or("", |d| d.query.as_str()),
            f.summary,
            if rules.is_empty() {
                String::new()
            } else {
                format!("(by {})", rules.join("; "))
            }
        );
    }
    let r = agent.handle(palisade_agent::Request::FqdnCacheList);
    let rows: Vec<palisade_proxy::dns::CacheRow> = r
        .result
        .map(serde_json::from_value)
        .transpose()?
        .unwrap_or_default();
    println!("   `palisade fqdn cache list`:");
    let (headers, body) = super::fqdn::render(&rows);
    for line in super::fqdn::table(&headers, &body).lines() {
        println!("     {line}");
    }
    agent
        .delete_text("frontend-fqdn.yaml", DNS_POLICY)
        .map_err(|e| anyhow::anyhow!("deleting frontend-fqdn.yaml: {e}"))?;
    Ok((total, mismatches))
}

const AUDIT_FILE: &str = "default-deny-audit.yaml";

/// A manifest with the audit annotation added to its metadata.
fn audited(manifest: &str) -> String {
    manifest.replacen(
        "metadata:\n",
        &format!(
            "metadata:\n  annotations:\n    {}: \"true\"\n",
            palisade_policy::audit::AUDIT_KEY
        ),
        1,
    )
}

/// The lab's default-deny step.
fn default_deny_step() -> anyhow::Result<Step> {
    steps()
        .into_iter()
        .find(|s| s.file == "default-deny.yaml")
        .context("the lab has no default-deny step")
}

/// The agent's L3/L4 flows of a probe's connection (not replies) recorded
/// from `seq` on: one per policy checked (the source's egress, the
/// destination's ingress).
fn probe_flows(agent: &Agent, w: &World, pr: &Probe, seq: u64) -> Vec<Flow> {
    let (src, dst) = (w.ip(pr.from).to_string(), w.ip(pr.to).to_string());
    agent
        .flows()
        .page(Some(seq), None)
        .flows
        .into_iter()
        .filter_map(|r| r.flow)
        .filter(|f| {
            let ip = f.ip.clone().unwrap_or_default();
            let (_, _, dport) = f.l4.as_ref().map_or(("", 0, 0), |l| l.summary());
            f.is_reply != Some(true)
                && f.l7.is_none()
                && ip.source == src
                && ip.destination == dst
                && dport == u32::from(pr.proto.port())
        })
        .collect()
}

/// Audit mode on the lab's own default-deny: the same manifest with the
/// annotation `palisade.io/audit: "true"`. The datapath delivers what the
/// policy would deny and the agent reports it as an AUDIT flow naming the
/// policy; what the policy does not select stays FORWARDED. Expected
/// values come from `policy trace` on the enforced view (what is
/// delivered) and on the enforced view plus the policy (what it would
/// deny).
fn audit_section(agent: &Agent, w: &World, timeout: Duration) -> anyhow::Result<(usize, usize)> {
    use palisade_policy::manifest::{Options, parse_file};
    let step = default_deny_step()?;
    println!(
        "\n== Audit mode: {} again, annotated {}: \"true\": what it would deny is delivered and reported as AUDIT",
        step.file,
        palisade_policy::audit::AUDIT_KEY
    );
    let manifest = audited(step.manifest);
    let objects: Vec<_> = parse_file(step.file, step.manifest, &Options::default())
        .into_iter()
        .filter_map(|d| d.object)
        .collect();
    agent
        .apply_text(AUDIT_FILE, &manifest)
        .map_err(|e| anyhow::anyhow!("{e}: {}", e.diagnostics().join("; ")))?;
    println!("   applied {AUDIT_FILE}");
    let full = agent.with_engine(|e| {
        let mut full = e.clone();
        full.apply_all(objects);
        full
    });
    let probes = [
        p(FE, BE, Tcp(80)),
        p(DB, BE, Tcp(3306)),
        p(BE, DB, Tcp(3306)),
        p(PFE, PBE, Tcp(80)),
    ];
    let seq = agent.flows().page(None, Some(0)).next;
    let outcomes = run_probes(w, &probes, timeout);
    let mut rows = Vec::new();
    let mut mismatches = 0;
    for (pr, wire) in probes.iter().zip(outcomes) {
        let q = |engine: &palisade_policy::engine::Engine| {
            trace(
                engine,
                &Query {
                    from: w.spec(pr.from),
                    to: w.spec(pr.to),
                    protocol: Protocol::TCP,
                    port: pr.proto.port(),
                    l7: None,
                },
            )
        };
        let enforced = agent.with_engine(q).map_err(anyhow::Error::msg)?;
        let policy = q(&full).map_err(anyhow::Error::msg)?;
        let want = if !policy.allowed {
            Verdict::Audit
        } else {
            Verdict::Forwarded
        };
        // The connection's AUDIT flow if there is one, else its FORWARDED one.
        let mut flow = None;
        let _ = traffic::wait_until(Duration::from_secs(2), || {
            let flows = probe_flows(agent, w, pr, seq);
            flow = [Verdict::Audit, Verdict::Forwarded]
                .iter()
                .find_map(|v| flows.iter().find(|f| f.verdict == *v))
                .or(flows.last())
                .cloned();
            flow.as_ref().is_some_and(|f| f.verdict == want)
        });
        let got = flow.as_ref().map_or("no flow", |f| f.verdict.as_str());
        let named: Vec<String> = flow
            .as_ref()
            .map(|f| {
                f.ingress_denied_by
                    .iter()
                    .chain(&f.egress_denied_by)
                    .map(|p| format!("{} {}/{}", p.kind, p.namespace, p.name))
                    .collect()
            })
            .unwrap_or_default();
        let ok = wire.delivered() == enforced.allowed
            && flow.as_ref().is_some_and(|f| f.verdict == want)
            && (want != Verdict::Audit || !named.is_empty());
        if !ok {
            mismatches += 1;
        }
        rows.push(vec![
            w.name(pr.from),
            w.name(pr.to),
            pr.proto.text(),
            if policy.allowed {
                "allowed".into()
            } else {
                format!("DENIED ({})", trace_rule(&policy))
            },
            format!(
                "{}{}",
                mark(wire.delivered()),
                if ok { "" } else { "  <<< MISMATCH" }
            ),
            if named.is_empty() {
                got.to_string()
            } else {
                format!("{got} (denied by {})", named.join(", "))
            },
        ]);
    }
    live::print_table(
        &[
            "FROM",
            "TO",
            "PORT",
            "THE POLICY SAYS (trace)",
            "ON THE WIRE",
            "AGENT'S FLOW",
        ],
        &rows,
    );
    agent
        .delete_text(AUDIT_FILE, &manifest)
        .map_err(|e| anyhow::anyhow!("deleting {AUDIT_FILE}: {e}"))?;
    Ok((probes.len(), mismatches))
}

/// Every policy the lab applies, under a file name of its own.
fn lab_policies() -> anyhow::Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = steps()
        .into_iter()
        .map(|s| (s.file.to_string(), s.manifest.to_string()))
        .collect();
    out.push(("example-policy-l7.yaml".into(), EXAMPLE_POLICY_L7.into()));
    out.push(("layer7-example.yaml".into(), LAYER7_EXAMPLE.into()));
    out.push(("frontend-fqdn.yaml".into(), DNS_POLICY.into()));
    out.push((AUDIT_FILE.into(), audited(default_deny_step()?.manifest)));
    Ok(out)
}

/// The cluster the lab's agent knows (namespaces, nodes, pods), as
/// Kubernetes manifests: JSON documents, which YAML reads as they are.
fn cluster_manifests(state: &ClusterState) -> String {
    use serde_json::json;
    let mut docs = Vec::new();
    for n in state.namespaces.values() {
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": n.name, "labels": n.labels},
        }));
    }
    for n in state.nodes.values() {
        let addresses: Vec<_> = n
            .addresses
            .iter()
            .map(|a| json!({"type": "InternalIP", "address": a.to_string()}))
            .collect();
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": n.name, "labels": n.labels},
            "status": {"addresses": addresses},
        }));
    }
    for p in state.pods.values() {
        let ports: Vec<_> = p
            .ports
            .iter()
            .map(|c| {
                let mut v = json!({"containerPort": c.port, "protocol": c.protocol.to_string()});
                if let Some(name) = &c.name {
                    v["name"] = name.clone().into();
                }
                v
            })
            .collect();
        let mut spec = json!({
            "serviceAccountName": p.service_account,
            "containers": [{"name": "main", "image": "palisade-lab", "ports": ports}],
        });
        if let Some(node) = &p.node_name {
            spec["nodeName"] = node.clone().into();
        }
        let ips: Vec<_> = p
            .ips
            .iter()
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect();
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
            "spec": spec,
            "status": {"podIPs": ips},
        }));
    }
    docs.iter()
        .map(|d| {
            format!(
                "---\n{}\n",
                serde_json::to_string_pretty(d).unwrap_or_default()
            )
        })
        .collect()
}

/// `--flows-out` and `--manifests-out`.
fn write_outputs(a: &LabArgs, agent: &Agent) -> anyhow::Result<()> {
    if let Some(path) = &a.flows_out {
        // Everything since the agent started (a lost_events record first
        // if the ring overwrote some), as `observe -o jsonpb` prints it.
        let page = agent.flows().page(Some(0), None);
        let mut text = String::new();
        for r in &page.flows {
            text.push_str(&render(r, Format::Jsonpb));
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("{}: cannot write", path.display()))?;
        println!(
            "\nWrote the {} flows the lab's agent recorded to {} (Hubble jsonpb lines).",
            page.flows.len(),
            path.display()
        );
    }
    if let Some(dir) = &a.manifests_out {
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies)
            .with_context(|| format!("{}: cannot create", policies.display()))?;
        let cluster = agent.with_engine(|e| cluster_manifests(e.state()));
        std::fs::write(dir.join("cluster.yaml"), cluster)
            .with_context(|| format!("{}: cannot write", dir.display()))?;
        let files = lab_policies()?;
        for (name, text) in &files {
            std::fs::write(policies.join(name), text)
                .with_context(|| format!("{}: cannot write", policies.display()))?;
        }
        println!(
            "Wrote the lab's cluster to {} and its {} policies to {}.",
            dir.join("cluster.yaml").display(),
            files.len(),
            policies.display()
        );
    }
    Ok(())
}
