//! Resolution benchmarks, each with the naive reference evaluator
//! (`tests/naive`) side by side:
//!
//! - `one_endpoint`: one endpoint against 1,000 rules over 10,000
//!   identities (target < 50 ms on one core), with a warm and a cold
//!   selector cache; the naive evaluator answers the same endpoint's
//!   verdicts for all 10,000 peers × 3 ports × both directions;
//! - `non_selecting`: 20,000 rules that do not select the endpoint
//!   (target < 0.5 ms); the naive evaluator answers one query;
//! - `add_identity`: a new pod with a new label set, applied to an engine
//!   whose node holds 200 endpoints (target < 100 µs per endpoint); the
//!   naive evaluator answers one endpoint's verdicts for the new peer.
//!
//! The cluster: 10,000 pods with distinct label sets (app × tier × team ×
//! a unique version) in 20 namespaces on 50 nodes; Palisade runs as the
//! agent of `node-0` (200 endpoints).

#[path = "../tests/naive/mod.rs"]
mod naive;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use naive::{NPeer, Naive};
use palisade_policy::api::{Direction, Policy, Protocol};
use palisade_policy::cluster::{ClusterState, ContainerPort, Namespace, Pod};
use palisade_policy::engine::Engine;
use palisade_policy::manifest::{Object, Options, parse_file};
use palisade_policy::selectorcache::SelectorCache;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const PODS: usize = 10_000;
const NAMESPACES: usize = 20;
const APPS: usize = 200;
const NODES: usize = 50;
const TIERS: &[&str] = &["web", "api", "db", "cache"];
const LOCAL_NODE: &str = "node-0";
/// The endpoint under test: pod 0 (app-0, web, ns-0, node-0).
const TARGET: &str = "ns-0/pod-0";
/// (protocol, port) the naive evaluator is asked about.
const PORTS: &[(Protocol, u16)] = &[
    (Protocol::TCP, 80),
    (Protocol::TCP, 5432),
    (Protocol::UDP, 53),
];

/// A small deterministic generator.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn pod(i: usize) -> Pod {
    let labels: BTreeMap<String, String> = [
        ("app", format!("app-{}", i % APPS)),
        ("tier", TIERS[i % TIERS.len()].to_string()),
        ("team", format!("t{}", (i / 7) % 10)),
        ("version", format!("v{i}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let ports = match TIERS[i % TIERS.len()] {
        "web" | "api" => vec![ContainerPort {
            name: Some("http".into()),
            port: 8080,
            protocol: Protocol::TCP,
        }],
        "db" => vec![ContainerPort {
            name: Some("pg".into()),
            port: 5432,
            protocol: Protocol::TCP,
        }],
        _ => vec![],
    };
    let n = 0x0a80_0000u32 + i as u32 + 1;
    Pod {
        namespace: format!("ns-{}", i % NAMESPACES),
        name: format!("pod-{i}"),
        labels,
        service_account: "default".into(),
        node_name: Some(format!("node-{}", i % NODES)),
        ports,
        ips: vec![IpAddr::V4(Ipv4Addr::from(n))],
        host_network: false,
    }
}

fn cluster() -> Vec<Object> {
    let mut out: Vec<Object> = (0..NAMESPACES)
        .map(|n| {
            Object::Namespace(Namespace {
                name: format!("ns-{n}"),
                labels: [
                    ("kubernetes.io/metadata.name".to_string(), format!("ns-{n}")),
                    (
                        "env".to_string(),
                        if n.is_multiple_of(2) { "prod" } else { "dev" }.into(),
                    ),
                ]
                .into(),
            })
        })
        .collect();
    out.extend((0..PODS).map(|i| Object::Pod(pod(i))));
    out
}

/// One realistic rule as a YAML document. `app` is the app the subject
/// selects (its pods live in namespace `app % 20`).
fn rule(k: usize, app: usize, rng: &mut Lcg) -> String {
    let ns = app % NAMESPACES;
    let peer_app = rng.below(APPS);
    let tier = TIERS[rng.below(TIERS.len())];
    let team = rng.below(10);
    match rng.below(20) {
        // Same-namespace peers by app, on a port and a range.
        0..=6 => format!(
            r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: r{k}, namespace: ns-{ns}}}
spec:
  endpointSelector: {{matchLabels: {{app: app-{app}}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: app-{peer_app}}}}}, {{matchLabels: {{tier: {tier}}}}}]
    toPorts: [{{ports: [{{port: "80", protocol: TCP}}, {{port: "8080", endPort: 8090, protocol: TCP}}]}}]
  egress:
  - toEndpoints: [{{matchLabels: {{tier: db}}}}]
    toPorts: [{{ports: [{{port: "pg", protocol: TCP}}]}}]
"#
        ),
        // Cross-namespace peers by namespace label and team.
        7..=9 => format!(
            r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: r{k}, namespace: ns-{ns}}}
spec:
  endpointSelector: {{matchLabels: {{app: app-{app}}}}}
  ingress:
  - fromEndpoints:
    - matchLabels: {{io.cilium.k8s.namespace.labels.env: prod, team: t{team}, tier: {tier}}}
    toPorts: [{{ports: [{{port: "http", protocol: TCP}}]}}]
"#
        ),
        // Egress to outside CIDRs, with excepts, and to DNS.
        10..=12 => format!(
            r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: r{k}, namespace: ns-{ns}}}
spec:
  endpointSelector: {{matchLabels: {{app: app-{app}}}}}
  egress:
  - toCIDRSet: [{{cidr: 20.{team}.0.0/16, except: [20.{team}.1.0/24]}}]
    toPorts: [{{ports: [{{port: "443", protocol: TCP}}]}}]
  - toCIDR: [30.{}.0.0/16]
  - toEndpoints: [{{matchLabels: {{io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}}}]
    toPorts: [{{ports: [{{port: "53", protocol: ANY}}]}}]
"#,
            k % 250
        ),
        // Denies.
        13..=14 => format!(
            r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: r{k}, namespace: ns-{ns}}}
spec:
  endpointSelector: {{matchLabels: {{app: app-{app}}}}}
  ingressDeny:
  - fromEndpoints: [{{matchLabels: {{tier: cache, team: t{team}}}}}]
  egressDeny:
  - toEntities: [world]
    toPorts: [{{ports: [{{port: "25", protocol: TCP}}]}}]
"#
        ),
        // L7.
        15..=16 => format!(
            r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: r{k}, namespace: ns-{ns}}}
spec:
  endpointSelector: {{matchLabels: {{app: app-{app}}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: app-{peer_app}}}}}]
    toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
      rules:
        http: [{{method: GET, path: "/api/.*"}}, {{method: POST, path: /submit}}]
"#
        ),
        // Clusterwide: a tier talks to a team's pods of another tier.
        17 => format!(
            r#"apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {{name: r{k}}}
spec:
  endpointSelector: {{matchLabels: {{app: app-{app}, tier: {}}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{tier: {tier}, team: t{team}}}}}]
    toPorts: [{{ports: [{{port: "5432", protocol: TCP}}]}}]
  - fromEntities: [host, remote-node]
"#,
            TIERS[app % TIERS.len()]
        ),
        // Kubernetes NetworkPolicy.
        _ => format!(
            r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: r{k}, namespace: ns-{ns}}}
spec:
  podSelector: {{matchLabels: {{app: app-{app}}}}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {{matchLabels: {{env: prod}}}}
      podSelector: {{matchLabels: {{tier: {tier}, team: t{team}}}}}
    ports: [{{port: 80}}, {{port: 8000, endPort: 8999}}]
  egress:
  - to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.128.0.0/16]}}}}]
  - ports: [{{port: 53, protocol: UDP}}]
"#
        ),
    }
}

/// `n` rules. `selecting`: the subjects spread over all apps (pod 0's app
/// gets its share); otherwise none selects pod 0.
fn rules(n: usize, selecting: bool) -> Vec<Object> {
    let mut rng = Lcg(0x5eed);
    let text: Vec<String> = (0..n)
        .map(|k| {
            let app = if selecting {
                // About 1 in 40 rules selects app-0.
                if k.is_multiple_of(40) {
                    0
                } else {
                    rng.below(APPS)
                }
            } else {
                // Apps of other namespaces than ns-0.
                loop {
                    let a = rng.below(APPS);
                    if !a.is_multiple_of(NAMESPACES) {
                        break a;
                    }
                }
            };
            rule(k, app, &mut rng)
        })
        .collect();
    // The decoder reads at most 1,024 documents per file.
    text.chunks(1_000)
        .flat_map(|chunk| parse_file("bench.yaml", &chunk.join("---\n"), &Options::default()))
        .map(|d| {
            assert!(d.errors.is_empty(), "{:?}", d.errors);
            d.object.expect("object")
        })
        .collect()
}

fn engine(objects: Vec<Object>) -> Engine {
    let mut e = Engine::new();
    e.set_local_node(Some(LOCAL_NODE.into()));
    e.apply_all(objects);
    e
}

fn split(objects: &[Object]) -> (Vec<Policy>, ClusterState) {
    let mut policies = Vec::new();
    let mut state = ClusterState::default();
    for o in objects {
        match o {
            Object::Policy(p) => policies.push(p.clone()),
            Object::Namespace(n) => {
                state.namespaces.insert(n.name.clone(), n.clone());
            }
            Object::Pod(p) => {
                state.pods.insert(p.key(), p.clone());
            }
            _ => {}
        }
    }
    (policies, state)
}

/// The naive evaluator's answers for one endpoint: every pod as a peer,
/// in both directions, on every port of `PORTS`.
fn naive_endpoint(naive: &Naive, endpoint: &Pod, peers: &[String]) -> usize {
    let mut allowed = 0;
    for peer in peers {
        let peer = NPeer::Pod(peer.clone());
        for dir in [Direction::Ingress, Direction::Egress] {
            for (proto, port) in PORTS {
                let d = naive
                    .direction(endpoint, dir, &peer, *proto, *port, None)
                    .expect("naive");
                allowed += usize::from(d.allowed);
            }
        }
    }
    allowed
}

/// The resolver's answers for the same questions, from the resolved map.
fn resolver_endpoint(
    e: &Engine,
    map: &palisade_policy::mapstate::PolicyMap,
    peers: &[String],
) -> usize {
    let mut allowed = 0;
    for peer in peers {
        let id = e.endpoint_identity(peer).expect("identity");
        for dir in [Direction::Ingress, Direction::Egress] {
            for (proto, port) in PORTS {
                allowed += usize::from(map.lookup(id, dir, proto.number(), *port).allowed);
            }
        }
    }
    allowed
}

fn one_endpoint(c: &mut Criterion) {
    let mut objects = cluster();
    objects.extend(rules(1_000, true));
    let (policies, state) = split(&objects);
    let mut e = engine(objects);
    let target = state.pods[TARGET].clone();
    let peers: Vec<String> = state.pods.keys().cloned().collect();
    let map = e.resolve_endpoint(TARGET).expect("endpoint").clone();
    let naive = Naive::new(&policies, &state);
    // The two must agree before their speed is compared.
    assert_eq!(
        resolver_endpoint(&e, &map, &peers),
        naive_endpoint(&naive, &target, &peers)
    );
    eprintln!(
        "one_endpoint: {} identities, {} rules, target map {} entries, selected by {} rules",
        e.identities().len(),
        e.rules().len(),
        map.entries.len(),
        e.selecting_rules(
            &e.identities()
                .get(e.endpoint_identity(TARGET).expect("id"))
                .expect("identity")
                .labels
        )
        .len()
    );

    let mut g = c.benchmark_group("one_endpoint");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.bench_function("resolve/warm_selector_cache", |b| {
        b.iter(|| black_box(e.resolve_endpoint(TARGET).map(|m| m.entries.len())))
    });
    g.bench_function("resolve/cold_selector_cache", |b| {
        b.iter_batched_ref(
            || SelectorCache::new(e.identities()),
            |cache| {
                black_box(
                    e.resolve_endpoint_in(TARGET, cache)
                        .map(|m| m.entries.len()),
                )
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("resolve_and_answer_all_peers", |b| {
        b.iter(|| {
            let map = e.resolve_endpoint(TARGET).expect("endpoint").clone();
            black_box(resolver_endpoint(&e, &map, &peers))
        })
    });
    g.bench_function("naive/answer_all_peers", |b| {
        b.iter(|| black_box(naive_endpoint(&naive, &target, &peers)))
    });
    g.finish();
}

fn non_selecting(c: &mut Criterion) {
    let mut objects = cluster();
    objects.extend(rules(20_000, false));
    let (policies, state) = split(&objects);
    let mut e = engine(objects);
    let target = state.pods[TARGET].clone();
    let map = e.resolve_endpoint(TARGET).expect("endpoint").clone();
    assert!(map.ingress.selected_by.is_empty() && map.egress.selected_by.is_empty());
    let naive = Naive::new(&policies, &state);
    let peer = NPeer::Pod("ns-1/pod-1".into());
    eprintln!(
        "non_selecting: {} rules, target map {} entries",
        e.rules().len(),
        map.entries.len()
    );

    let mut g = c.benchmark_group("non_selecting");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.bench_function("resolve/warm_selector_cache", |b| {
        b.iter(|| black_box(e.resolve_endpoint(TARGET).map(|m| m.entries.len())))
    });
    g.bench_function("resolve/cold_selector_cache", |b| {
        b.iter_batched_ref(
            || SelectorCache::new(e.identities()),
            |cache| {
                black_box(
                    e.resolve_endpoint_in(TARGET, cache)
                        .map(|m| m.entries.len()),
                )
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("naive/one_query", |b| {
        b.iter(|| {
            black_box(naive.direction(&target, Direction::Ingress, &peer, Protocol::TCP, 80, None))
        })
    });
    g.finish();
}

fn add_identity(c: &mut Criterion) {
    let mut objects = cluster();
    objects.extend(rules(1_000, true));
    let (policies, mut state) = split(&objects);
    let e = engine(objects);
    let endpoints = e.endpoints().count();
    // A new pod with a new label set, on another node, selected by many
    // rules' peer selectors (tier web, team t3, an app of ns-0).
    let mut p = pod(PODS + 20);
    p.node_name = Some("node-1".into());
    p.ports.clear();
    p.labels.insert("version".into(), "new".into());
    let key = p.key();
    {
        let mut check = e.clone();
        let deltas = check.apply(Object::Pod(p.clone()));
        let mut scratch = Engine::new();
        scratch.set_local_node(Some(LOCAL_NODE.into()));
        let mut all = cluster();
        all.extend(rules(1_000, true));
        all.push(Object::Pod(p.clone()));
        scratch.apply_all(all);
        for (ep, _, m) in check.endpoints() {
            let s = scratch.endpoint_map(ep).expect("endpoint");
            assert_eq!(m.entries.len(), s.entries.len(), "{ep}");
        }
        eprintln!(
            "add_identity: {endpoints} endpoints, {} of them change, {} entries added",
            deltas.len(),
            deltas.values().map(|d| d.adds.len()).sum::<usize>()
        );
    }
    state.pods.insert(key.clone(), p.clone());
    let naive = Naive::new(&policies, &state);
    let target = state.pods[TARGET].clone();

    let mut g = c.benchmark_group("add_identity");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(endpoints as u64));
    g.bench_function("apply_new_pod/per_endpoint", |b| {
        b.iter_batched_ref(
            || e.clone(),
            |e| black_box(e.apply(Object::Pod(p.clone())).len()),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("rebuild/per_endpoint", |b| {
        b.iter_batched_ref(
            || e.clone(),
            |e| black_box(e.apply_all([Object::Pod(p.clone())]).len()),
            BatchSize::LargeInput,
        )
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("naive/new_peer_one_endpoint", |b| {
        b.iter(|| black_box(naive_endpoint(&naive, &target, std::slice::from_ref(&key))))
    });
    g.finish();
}

criterion_group!(benches, one_endpoint, non_selecting, add_identity);
criterion_main!(benches);
