//! Property tests: the resolver (`Engine` + `trace`) against the naive
//! reference evaluator (`tests/naive`), on random clusters and policies
//! written as YAML and decoded by `manifest::parse_file`.
//!
//! - every pod pair, pod/outside-address and pod/entity pair × a set of
//!   ports and protocols (and HTTP requests) gets the same verdict from both;
//! - verdicts do not depend on the order of policies, rules and elements;
//! - incremental updates (a new pod, a deleted policy, an added policy)
//!   give the same maps as a rebuild from scratch, and their deltas turn the
//!   old maps into the new ones.

mod naive;

use naive::{NPeer, Naive};
use palisade_policy::api::{Direction, Policy, PolicyId, Protocol};
use palisade_policy::cluster::ClusterState;
use palisade_policy::engine::Engine;
use palisade_policy::l7::{HttpRequest, L7Request};
use palisade_policy::manifest::{Object, Options, parse_file};
use palisade_policy::mapstate::{Key, MapDelta, PolicyMap, RuleRef, Verdict};
use palisade_policy::trace::{PeerSpec, Query, trace};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

// ------------------------------------------------------------ the alphabet

const NAMESPACES: &[&str] = &["ns-a", "ns-b", "ns-c"];
const APPS: &[&str] = &["web", "db", "api"];
const TIERS: &[&str] = &["front", "back"];

/// Selector keys (Cilium syntax) and the values they take.
const SEL_KEYS: &[(&str, &[&str])] = &[
    ("app", &["web", "db", "api"]),
    ("tier", &["front", "back"]),
    ("k8s:app", &["web", "db"]),
    ("any:tier", &["front"]),
    ("io.kubernetes.pod.namespace", &["ns-a", "ns-b"]),
    ("k8s:io.kubernetes.pod.namespace", &["ns-a", "ns-c"]),
    ("io.cilium.k8s.namespace.labels.team", &["x", "y"]),
    (
        "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name",
        &["ns-a", "ns-c"],
    ),
    ("io.cilium.k8s.policy.serviceaccount", &["robot"]),
];
const KNP_POD_KEYS: &[(&str, &[&str])] =
    &[("app", &["web", "db", "api"]), ("tier", &["front", "back"])];
const KNP_NS_KEYS: &[(&str, &[&str])] = &[
    ("team", &["x", "y"]),
    ("kubernetes.io/metadata.name", &["ns-a", "ns-b", "ns-c"]),
];
const OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist"];
const ENTITIES: &[&str] = &[
    "all",
    "world",
    "cluster",
    "host",
    "remote-node",
    "kube-apiserver",
    "health",
    "none",
];
const CIDRS: &[&str] = &[
    "20.0.0.0/8",
    "20.1.0.0/16",
    "20.1.1.1/32",
    "30.0.0.0/8",
    "0.0.0.0/0",
    "10.1.0.0/16",
];
/// (cidr, excepts inside it)
const CIDR_SETS: &[(&str, &[&str])] = &[
    ("20.0.0.0/8", &["20.1.0.0/16"]),
    ("20.0.0.0/8", &["20.1.1.0/24", "20.2.0.0/16"]),
    ("20.1.0.0/16", &["20.1.1.1/32"]),
    ("0.0.0.0/0", &["20.0.0.0/8"]),
    ("30.0.0.0/8", &[]),
];
const PORTS: &[&str] = &[
    "80", "443", "0", "8080", "53", "1000", "http", "dns", "metrics", "9090",
];
const END_PORTS: &[u16] = &[0, 50, 90, 1023, 2000, 65535];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP", "ANY"];

/// Outside addresses and entities the queries use.
const OUTSIDE_IPS: &[&str] = &["20.1.1.1", "20.1.2.3", "20.2.0.1", "30.0.0.1", "40.0.0.1"];
const QUERY_ENTITIES: &[&str] = &["world", "host", "remote-node", "kube-apiserver"];
/// (protocol, port or ICMP type)
const QUERY_PORTS: &[(Protocol, u16)] = &[
    (Protocol::TCP, 80),
    (Protocol::TCP, 81),
    (Protocol::TCP, 443),
    (Protocol::TCP, 8080),
    (Protocol::TCP, 9090),
    (Protocol::TCP, 1500),
    (Protocol::UDP, 53),
    (Protocol::TCP, 53),
    (Protocol::SCTP, 80),
    (Protocol::UDP, 65535),
    (Protocol::ICMP, 8),
    (Protocol::ICMP, 0),
];

// ------------------------------------------------------------ the cluster

#[derive(Clone, Debug)]
struct PodSpec {
    ns: usize,
    app: Option<usize>,
    tier: Option<usize>,
    robot: bool,
    /// http on 80 or 8080
    http_port: Option<u16>,
    dns: bool,
    metrics: bool,
}

fn pod_spec() -> impl Strategy<Value = PodSpec> {
    (
        0..NAMESPACES.len(),
        prop::option::of(0..APPS.len()),
        prop::option::of(0..TIERS.len()),
        prop::bool::weighted(0.2),
        prop::option::of(select(&[80u16, 8080][..])),
        prop::bool::ANY,
        prop::bool::weighted(0.3),
    )
        .prop_map(|(ns, app, tier, robot, http_port, dns, metrics)| PodSpec {
            ns,
            app,
            tier,
            robot,
            http_port,
            dns,
            metrics,
        })
}

fn pod_doc(i: usize, p: &PodSpec, extra_label: Option<(&str, &str)>) -> Value {
    let mut labels = Map::new();
    if let Some(a) = p.app {
        labels.insert("app".into(), APPS[a].into());
    }
    if let Some(t) = p.tier {
        labels.insert("tier".into(), TIERS[t].into());
    }
    if let Some((k, v)) = extra_label {
        labels.insert(k.into(), v.into());
    }
    let mut ports = Vec::new();
    if let Some(h) = p.http_port {
        ports.push(json!({"name": "http", "containerPort": h, "protocol": "TCP"}));
    }
    if p.dns {
        ports.push(json!({"name": "dns", "containerPort": 53, "protocol": "UDP"}));
    }
    if p.metrics {
        ports.push(json!({"name": "metrics", "containerPort": 9090}));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("pod-{i}"), "namespace": NAMESPACES[p.ns], "labels": labels},
        "spec": {
            "serviceAccountName": if p.robot { "robot" } else { "default" },
            "containers": [{"name": "c", "image": "x", "ports": ports}],
        },
        "status": {"podIP": format!("10.1.0.{}", i + 1)},
    })
}

/// Namespaces: declared or not, with an optional `team` label.
fn namespaces() -> impl Strategy<Value = Vec<Option<Option<usize>>>> {
    prop::collection::vec(
        prop::option::weighted(0.7, prop::option::of(0..2usize)),
        NAMESPACES.len(),
    )
}

fn namespace_docs(ns: &[Option<Option<usize>>]) -> Vec<Value> {
    ns.iter()
        .enumerate()
        .filter_map(|(i, n)| {
            n.map(|team| {
                let mut labels = Map::new();
                if let Some(t) = team {
                    labels.insert("team".into(), ["x", "y"][t].into());
                }
                json!({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": NAMESPACES[i], "labels": labels}})
            })
        })
        .collect()
}

// ------------------------------------------------------------ selectors

fn selector_from(keys: &'static [(&'static str, &'static [&'static str])]) -> BoxedStrategy<Value> {
    let ml = prop::collection::vec((0..keys.len(), 0..8usize), 0..3);
    let me = prop::collection::vec((0..keys.len(), 0..OPERATORS.len(), 1..8u8), 0..3);
    (ml, me)
        .prop_map(move |(ml, me)| {
            let mut sel = Map::new();
            if !ml.is_empty() {
                let mut m = Map::new();
                for (k, v) in ml {
                    let (key, vals) = keys[k];
                    m.insert(key.into(), vals[v % vals.len()].into());
                }
                sel.insert("matchLabels".into(), Value::Object(m));
            }
            if !me.is_empty() {
                let exprs: Vec<Value> = me
                    .into_iter()
                    .map(|(k, op, bits)| {
                        let (key, vals) = keys[k];
                        let op = OPERATORS[op];
                        if op == "In" || op == "NotIn" {
                            let mut vs: Vec<&str> = vals
                                .iter()
                                .enumerate()
                                .filter(|(i, _)| bits & (1 << i) != 0)
                                .map(|(_, v)| *v)
                                .collect();
                            if vs.is_empty() {
                                vs.push(vals[0]);
                            }
                            json!({"key": key, "operator": op, "values": vs})
                        } else {
                            json!({"key": key, "operator": op})
                        }
                    })
                    .collect();
                sel.insert("matchExpressions".into(), Value::Array(exprs));
            }
            Value::Object(sel)
        })
        .boxed()
}

fn peer_selector() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => selector_from(SEL_KEYS),
        1 => Just(json!({"matchLabels": {"reserved:host": ""}})),
        1 => Just(json!({"matchLabels": {"reserved:world": ""}})),
        1 => Just(json!({"matchExpressions": [{"key": "reserved:kube-apiserver", "operator": "Exists"}]})),
    ]
    .boxed()
}

// ------------------------------------------------------------ rules

fn port_protocol() -> impl Strategy<Value = Value> {
    (
        select(PORTS),
        prop::option::weighted(0.25, select(END_PORTS)),
        prop::option::of(select(PROTOCOLS)),
    )
        .prop_map(|(port, end, proto)| {
            let mut m = Map::new();
            m.insert("port".into(), port.into());
            if let Some(e) = end {
                m.insert("endPort".into(), e.into());
            }
            if let Some(p) = proto {
                m.insert("protocol".into(), p.into());
            }
            Value::Object(m)
        })
}

fn http_rules() -> impl Strategy<Value = Value> {
    prop::collection::vec(
        select(
            &[
                r#"{"method": "GET"}"#,
                r#"{"path": "/public.*"}"#,
                r#"{"method": "POST", "path": "/api"}"#,
                r#"{}"#,
            ][..],
        ),
        0..3,
    )
    .prop_map(|rs| {
        Value::Array(
            rs.into_iter()
                .map(|r| serde_json::from_str(r).unwrap_or(Value::Null))
                .collect(),
        )
    })
}

fn port_rule(deny: bool) -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(port_protocol(), 1..3),
        prop::option::weighted(0.4, http_rules()),
        select(&["80", "8080", "443"][..]),
        prop::option::weighted(0.2, select(&[90u16, 8090][..])),
    )
        .prop_map(
            move |(ports, http, l7port, l7end)| match http.filter(|_| !deny) {
                // L7 rules need TCP and a non-zero port.
                Some(rules) => {
                    let mut p = json!({"port": l7port, "protocol": "TCP"});
                    if let Some(e) = l7end {
                        p["endPort"] = e.into();
                    }
                    json!({"ports": [p], "rules": {"http": rules}})
                }
                None => json!({ "ports": ports }),
            },
        )
}

fn icmps() -> impl Strategy<Value = Value> {
    prop::collection::vec(
        select(
            &[
                r#"{"type": 8}"#,
                r#"{"type": "EchoReply"}"#,
                r#"{"type": 3}"#,
                r#"{"family": "IPv6", "type": "EchoRequest"}"#,
            ][..],
        ),
        1..3,
    )
    .prop_map(|fs| {
        let fields: Vec<Value> = fs
            .into_iter()
            .map(|f| serde_json::from_str(f).unwrap_or(Value::Null))
            .collect();
        json!([{ "fields": fields }])
    })
}

#[derive(Clone, Debug)]
enum L3 {
    Absent,
    Endpoints(Vec<Value>),
    Entities(Vec<&'static str>),
    Cidr(Vec<&'static str>),
    CidrSet(Vec<usize>),
}

fn l3() -> impl Strategy<Value = L3> {
    prop_oneof![
        2 => Just(L3::Absent),
        5 => prop::collection::vec(peer_selector(), 0..3).prop_map(L3::Endpoints),
        2 => subsequence(ENTITIES, 1..3).prop_map(L3::Entities),
        1 => subsequence(CIDRS, 1..3).prop_map(L3::Cidr),
        1 => prop::collection::vec(0..CIDR_SETS.len(), 1..3).prop_map(L3::CidrSet),
    ]
}

fn element(egress: bool, deny: bool) -> impl Strategy<Value = Value> {
    let l4 = prop_oneof![
        3 => Just(None),
        5 => prop::collection::vec(port_rule(deny), 1..3).prop_map(|p| Some(("toPorts", Value::Array(p)))),
        1 => icmps().prop_map(|i| Some(("icmps", i))),
    ];
    (l3(), l4).prop_map(move |(l3, l4)| {
        let pre = if egress { "to" } else { "from" };
        let mut m = Map::new();
        match l3 {
            L3::Absent => {}
            L3::Endpoints(sels) => {
                m.insert(format!("{pre}Endpoints"), Value::Array(sels));
            }
            L3::Entities(es) => {
                m.insert(format!("{pre}Entities"), json!(es));
            }
            L3::Cidr(cs) => {
                m.insert(format!("{pre}CIDR"), json!(cs));
            }
            L3::CidrSet(ix) => {
                let set: Vec<Value> = ix
                    .into_iter()
                    .map(|i| {
                        let (c, ex) = CIDR_SETS[i];
                        if ex.is_empty() {
                            json!({ "cidr": c })
                        } else {
                            json!({"cidr": c, "except": ex})
                        }
                    })
                    .collect();
                m.insert(format!("{pre}CIDRSet"), Value::Array(set));
            }
        }
        if let Some((k, v)) = l4 {
            m.insert(k.into(), v);
        }
        Value::Object(m)
    })
}

fn cilium_rule() -> impl Strategy<Value = Value> {
    (
        selector_from(SEL_KEYS),
        prop::collection::vec(element(false, false), 0..3),
        prop::collection::vec(element(false, true), 0..2),
        prop::collection::vec(element(true, false), 0..3),
        prop::collection::vec(element(true, true), 0..2),
        prop::option::weighted(
            0.2,
            (
                prop::option::of(prop::bool::ANY),
                prop::option::of(prop::bool::ANY),
            ),
        ),
    )
        .prop_map(|(subject, ing, ing_deny, eg, eg_deny, dd)| {
            let mut r = Map::new();
            r.insert("endpointSelector".into(), subject);
            for (k, v) in [
                ("ingress", ing),
                ("ingressDeny", ing_deny),
                ("egress", eg),
                ("egressDeny", eg_deny),
            ] {
                if !v.is_empty() {
                    r.insert(k.into(), Value::Array(v));
                }
            }
            if !r.contains_key("ingress")
                && !r.contains_key("ingressDeny")
                && !r.contains_key("egress")
                && !r.contains_key("egressDeny")
            {
                // An empty rule: default deny, nothing allowed.
                r.insert("ingress".into(), json!([{}]));
            }
            if let Some((i, e)) = dd {
                let mut d = Map::new();
                if let Some(i) = i {
                    d.insert("ingress".into(), i.into());
                }
                if let Some(e) = e {
                    d.insert("egress".into(), e.into());
                }
                r.insert("enableDefaultDeny".into(), Value::Object(d));
            }
            Value::Object(r)
        })
}

fn knp_peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        selector_from(KNP_POD_KEYS).prop_map(|s| json!({ "podSelector": s })),
        selector_from(KNP_NS_KEYS).prop_map(|s| json!({ "namespaceSelector": s })),
        (selector_from(KNP_POD_KEYS), selector_from(KNP_NS_KEYS))
            .prop_map(|(p, n)| json!({"podSelector": p, "namespaceSelector": n})),
        (0..CIDR_SETS.len()).prop_map(|i| {
            let (c, ex) = CIDR_SETS[i];
            json!({"ipBlock": {"cidr": c, "except": ex}})
        }),
    ]
}

fn knp_port() -> impl Strategy<Value = Value> {
    (
        prop::option::of(select(&["TCP", "UDP", "SCTP"][..])),
        prop::option::weighted(0.85, select(&["80", "53", "443", "http", "dns"][..])),
        prop::option::weighted(0.2, select(&[90u16, 1000][..])),
    )
        .prop_map(|(proto, port, end)| {
            let mut m = Map::new();
            if let Some(p) = proto {
                m.insert("protocol".into(), p.into());
            }
            if let Some(p) = port {
                match p.parse::<u16>() {
                    Ok(n) => {
                        m.insert("port".into(), n.into());
                        if n == 80
                            && let Some(e) = end
                        {
                            m.insert("endPort".into(), e.into());
                        }
                    }
                    Err(_) => {
                        m.insert("port".into(), p.into());
                    }
                }
            }
            Value::Object(m)
        })
}

fn knp_item(peer_field: &'static str) -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(knp_peer(), 0..3)),
        prop::option::of(prop::collection::vec(knp_port(), 0..3)),
    )
        .prop_map(move |(peers, ports)| {
            let mut m = Map::new();
            if let Some(p) = peers {
                m.insert(peer_field.into(), Value::Array(p));
            }
            if let Some(p) = ports {
                m.insert("ports".into(), Value::Array(p));
            }
            Value::Object(m)
        })
}

/// A policy document (without its name, filled in later).
fn policy() -> impl Strategy<Value = Value> {
    let cnp = (
        0..NAMESPACES.len(),
        prop::collection::vec(cilium_rule(), 1..3),
        prop::bool::ANY,
    )
        .prop_map(|(ns, rules, single)| {
            let mut doc = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                                 "metadata": {"namespace": NAMESPACES[ns]}});
            set_rules(&mut doc, rules, single);
            doc
        });
    let ccnp = (prop::collection::vec(cilium_rule(), 1..3), prop::bool::ANY).prop_map(
        |(rules, single)| {
            let mut doc = json!({"apiVersion": "cilium.io/v2",
                                 "kind": "CiliumClusterwideNetworkPolicy", "metadata": {}});
            set_rules(&mut doc, rules, single);
            doc
        },
    );
    let knp = (
        0..NAMESPACES.len(),
        selector_from(KNP_POD_KEYS),
        prop::option::of(subsequence(&["Ingress", "Egress"][..], 0..=2)),
        prop::option::of(prop::collection::vec(knp_item("from"), 0..3)),
        prop::option::of(prop::collection::vec(knp_item("to"), 0..3)),
    )
        .prop_map(|(ns, pod_selector, types, ingress, egress)| {
            let mut spec = Map::new();
            spec.insert("podSelector".into(), pod_selector);
            if let Some(t) = types {
                spec.insert("policyTypes".into(), json!(t));
            }
            if let Some(i) = ingress {
                spec.insert("ingress".into(), Value::Array(i));
            }
            if let Some(e) = egress {
                spec.insert("egress".into(), Value::Array(e));
            }
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"namespace": NAMESPACES[ns]}, "spec": spec})
        });
    prop_oneof![3 => cnp, 2 => ccnp, 2 => knp]
}

fn set_rules(doc: &mut Value, mut rules: Vec<Value>, single: bool) {
    if single && rules.len() == 1 {
        doc["spec"] = rules.remove(0);
    } else {
        doc["specs"] = Value::Array(rules);
    }
}

// ------------------------------------------------------------ scenarios

#[derive(Clone, Debug)]
struct Scenario {
    namespaces: Vec<Option<Option<usize>>>,
    pods: Vec<PodSpec>,
    policies: Vec<Value>,
}

fn scenario(max_pods: usize, max_policies: usize) -> impl Strategy<Value = Scenario> {
    (
        namespaces(),
        prop::collection::vec(pod_spec(), 1..=max_pods),
        prop::collection::vec(policy(), 1..=max_policies),
    )
        .prop_map(|(namespaces, pods, mut policies)| {
            for (i, p) in policies.iter_mut().enumerate() {
                p["metadata"]["name"] = format!("p{i}").into();
            }
            Scenario {
                namespaces,
                pods,
                policies,
            }
        })
}

impl Scenario {
    fn cluster_docs(&self) -> Vec<Value> {
        let mut docs = namespace_docs(&self.namespaces);
        docs.extend(
            self.pods
                .iter()
                .enumerate()
                .map(|(i, p)| pod_doc(i, p, None)),
        );
        docs
    }

    fn pod_keys(&self) -> Vec<String> {
        self.pods
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}/pod-{i}", NAMESPACES[p.ns]))
            .collect()
    }
}

/// Renders documents as one multi-document YAML file.
fn render(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_saphyr::to_string(d).expect("YAML rendering"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Decodes a file; every document must be valid.
fn decode(text: &str) -> Vec<Object> {
    parse_file("generated.yaml", text, &Options::default())
        .into_iter()
        .map(|d| match d.object {
            Some(o) if d.errors.is_empty() => o,
            _ => panic!(
                "generated document {} {} does not decode: {:?}\n{text}",
                d.kind, d.name, d.errors
            ),
        })
        .collect()
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
            other => panic!("unexpected object {other:?}"),
        }
    }
    (policies, state)
}

// ------------------------------------------------------------ queries

#[derive(Clone, Debug)]
struct Q {
    from: NPeer,
    to: NPeer,
    proto: Protocol,
    port: u16,
    http: Option<HttpRequest>,
}

fn spec_of(p: &NPeer) -> PeerSpec {
    match p {
        NPeer::Pod(k) => PeerSpec::Pod(k.clone()),
        NPeer::Entity(e) => PeerSpec::Entity(e.clone()),
        NPeer::Ip(ip) => PeerSpec::Ip {
            ip: *ip,
            dns_name: None,
        },
    }
}

fn queries(pods: &[String]) -> Vec<Q> {
    let mut pairs: Vec<(NPeer, NPeer)> = Vec::new();
    for a in pods {
        for b in pods {
            pairs.push((NPeer::Pod(a.clone()), NPeer::Pod(b.clone())));
        }
        for ip in OUTSIDE_IPS {
            let ip: IpAddr = ip.parse().expect("ip");
            pairs.push((NPeer::Pod(a.clone()), NPeer::Ip(ip)));
        }
        for e in QUERY_ENTITIES {
            pairs.push((NPeer::Pod(a.clone()), NPeer::Entity(e.to_string())));
        }
        pairs.push((
            NPeer::Ip("20.1.1.1".parse().expect("ip")),
            NPeer::Pod(a.clone()),
        ));
        pairs.push((
            NPeer::Ip("40.0.0.1".parse().expect("ip")),
            NPeer::Pod(a.clone()),
        ));
        pairs.push((NPeer::Entity("host".into()), NPeer::Pod(a.clone())));
        pairs.push((NPeer::Entity("world".into()), NPeer::Pod(a.clone())));
    }
    let mut out = Vec::new();
    for (from, to) in pairs {
        for (proto, port) in QUERY_PORTS {
            out.push(Q {
                from: from.clone(),
                to: to.clone(),
                proto: *proto,
                port: *port,
                http: None,
            });
        }
        for (method, path) in [("GET", "/public/a"), ("POST", "/api"), ("PUT", "/x")] {
            out.push(Q {
                from: from.clone(),
                to: to.clone(),
                proto: Protocol::TCP,
                port: 80,
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: None,
                    headers: vec![],
                }),
            });
        }
    }
    out
}

/// The resolver's answer: overall, and per direction (verdict name, allowed).
type Answer = (bool, Vec<(Direction, String, bool)>);

fn resolver_answer(engine: &Engine, q: &Q) -> Answer {
    let query = Query {
        from: spec_of(&q.from),
        to: spec_of(&q.to),
        protocol: q.proto,
        port: q.port,
        l7: q.http.clone().map(L7Request::Http),
    };
    let r = trace(engine, &query).expect("trace");
    (
        r.allowed,
        r.directions
            .iter()
            .map(|d| (d.direction, d.verdict.clone(), d.allowed))
            .collect(),
    )
}

fn naive_answer(naive: &Naive, q: &Q) -> Answer {
    let o = naive
        .evaluate(&q.from, &q.to, q.proto, q.port, q.http.as_ref())
        .expect("naive");
    let mut dirs = Vec::new();
    for d in [&o.egress, &o.ingress].into_iter().flatten() {
        dirs.push((
            d.direction,
            d.verdict_name().to_string(),
            d.allowed && d.l7_allowed != Some(false),
        ));
    }
    (o.allowed, dirs)
}

// ------------------------------------------------------------ map comparison

type EntryView = (Verdict, u32, u8, BTreeSet<RuleRef>);

fn entries(m: &PolicyMap) -> BTreeMap<Key, EntryView> {
    m.entries
        .iter()
        .map(|(k, e)| {
            (
                *k,
                (e.verdict, e.precedence, e.auth_type, e.derived_from.clone()),
            )
        })
        .collect()
}

fn all_entries(e: &Engine) -> BTreeMap<String, BTreeMap<Key, EntryView>> {
    e.endpoints()
        .map(|(k, _, m)| (k.clone(), entries(m)))
        .collect()
}

fn apply_deltas(
    mut before: BTreeMap<String, BTreeMap<Key, EntryView>>,
    deltas: &BTreeMap<String, MapDelta>,
) -> BTreeMap<String, BTreeMap<Key, EntryView>> {
    for (ep, d) in deltas {
        let m = before.entry(ep.clone()).or_default();
        for k in &d.removes {
            m.remove(k);
        }
        for (k, e) in &d.adds {
            m.insert(
                *k,
                (e.verdict, e.precedence, e.auth_type, e.derived_from.clone()),
            );
        }
    }
    before.retain(|_, m| !m.is_empty());
    before
}

fn non_empty(
    mut m: BTreeMap<String, BTreeMap<Key, EntryView>>,
) -> BTreeMap<String, BTreeMap<Key, EntryView>> {
    m.retain(|_, e| !e.is_empty());
    m
}

/// Checks an incremental change against a rebuild from `expected_objects`.
fn check_incremental(
    mut engine: Engine,
    change: impl FnOnce(&mut Engine) -> BTreeMap<String, MapDelta>,
    expected_objects: Vec<Object>,
    what: &str,
    text: &str,
) -> Result<(), TestCaseError> {
    let before = all_entries(&engine);
    let deltas = change(&mut engine);
    let after = all_entries(&engine);
    let scratch = all_entries(&Engine::from_objects(expected_objects));
    prop_assert!(
        after == scratch,
        "{what}: incremental maps differ from a rebuild\n{}\n{text}",
        diff_maps(&after, &scratch)
    );
    prop_assert!(
        non_empty(apply_deltas(before, &deltas)) == non_empty(after.clone()),
        "{what}: the deltas do not turn the old maps into the new ones\n{text}"
    );
    Ok(())
}

fn diff_maps(
    a: &BTreeMap<String, BTreeMap<Key, EntryView>>,
    b: &BTreeMap<String, BTreeMap<Key, EntryView>>,
) -> String {
    let mut out = String::new();
    let eps: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for ep in eps {
        let (ea, eb) = (a.get(ep), b.get(ep));
        if ea == eb {
            continue;
        }
        out.push_str(&format!("endpoint {ep}:\n"));
        let empty = BTreeMap::new();
        let (ea, eb) = (ea.unwrap_or(&empty), eb.unwrap_or(&empty));
        let keys: BTreeSet<&Key> = ea.keys().chain(eb.keys()).collect();
        for k in keys {
            if ea.get(k) != eb.get(k) {
                out.push_str(&format!(
                    "  {k:?}\n    incremental: {:?}\n    rebuild:     {:?}\n",
                    ea.get(k),
                    eb.get(k)
                ));
            }
        }
    }
    out
}

// ------------------------------------------------------------ shuffling

/// A small deterministic permutation source.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Shuffles every list whose order carries no meaning: specs, rule
/// sections, peers, ports, entities.
fn shuffle_value(v: &mut Value, rng: &mut Rng) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if let Value::Array(items) = child
                    && matches!(
                        k.as_str(),
                        "specs"
                            | "ingress"
                            | "ingressDeny"
                            | "egress"
                            | "egressDeny"
                            | "fromEndpoints"
                            | "toEndpoints"
                            | "fromEntities"
                            | "toEntities"
                            | "toCIDR"
                            | "fromCIDR"
                            | "toCIDRSet"
                            | "fromCIDRSet"
                            | "toPorts"
                            | "ports"
                            | "from"
                            | "to"
                            | "http"
                    )
                {
                    rng.shuffle(items);
                }
                shuffle_value(child, rng);
            }
        }
        Value::Array(items) => {
            for i in items {
                shuffle_value(i, rng);
            }
        }
        _ => {}
    }
}

// ------------------------------------------------------------ properties

fn check_agreement(s: &Scenario) -> Result<(), TestCaseError> {
    let mut docs = s.cluster_docs();
    docs.extend(s.policies.iter().cloned());
    let text = render(&docs);
    let objects = decode(&text);
    let (policies, state) = split(&objects);
    let engine = Engine::from_objects(objects);
    let naive = Naive::new(&policies, &state);
    for q in queries(&s.pod_keys()) {
        let r = resolver_answer(&engine, &q);
        let n = naive_answer(&naive, &q);
        if r != n {
            let detail = trace(
                &engine,
                &Query {
                    from: spec_of(&q.from),
                    to: spec_of(&q.to),
                    protocol: q.proto,
                    port: q.port,
                    l7: q.http.clone().map(L7Request::Http),
                },
            )
            .map(|t| t.to_string())
            .unwrap_or_default();
            prop_assert!(
                false,
                "resolver and naive evaluator disagree on {q:?}\n resolver: {r:?}\n naive:    {n:?}\n{detail}\n--- manifests ---\n{text}"
            );
        }
    }
    Ok(())
}

fn check_order_independence(s: &Scenario, seed: u64) -> Result<(), TestCaseError> {
    let mut docs = s.cluster_docs();
    docs.extend(s.policies.iter().cloned());
    let text = render(&docs);
    let engine = Engine::from_objects(decode(&text));
    let mut rng = Rng(seed | 1);
    let mut shuffled = s.policies.clone();
    rng.shuffle(&mut shuffled);
    for p in &mut shuffled {
        shuffle_value(p, &mut rng);
    }
    let mut docs2 = s.cluster_docs();
    rng.shuffle(&mut docs2);
    docs2.extend(shuffled);
    let text2 = render(&docs2);
    let engine2 = Engine::from_objects(decode(&text2));
    for q in queries(&s.pod_keys()) {
        let a = resolver_answer(&engine, &q);
        let b = resolver_answer(&engine2, &q);
        prop_assert!(
            a == b,
            "verdict depends on rule order for {q:?}: {a:?} vs {b:?}\n--- original ---\n{text}\n--- shuffled ---\n{text2}"
        );
    }
    Ok(())
}

fn check_incremental_updates(
    s: &Scenario,
    extra: &PodSpec,
    extra_named: bool,
) -> Result<(), TestCaseError> {
    let cluster = s.cluster_docs();
    let mut all_docs = cluster.clone();
    all_docs.extend(s.policies.iter().cloned());
    let text = render(&all_docs);
    let objects = decode(&text);
    let base = Engine::from_objects(objects.clone());

    // A new pod with a new label set (no named ports: the incremental
    // path; with named ports: a rebuild).
    let mut extra = extra.clone();
    if !extra_named {
        extra.http_port = None;
        extra.dns = false;
        extra.metrics = false;
    }
    let i = s.pods.len();
    let pod = decode(&render(&[pod_doc(i, &extra, Some(("extra", "yes")))]));
    let mut with_pod = objects.clone();
    with_pod.extend(pod.iter().cloned());
    let pod_obj = pod[0].clone();
    check_incremental(
        base.clone(),
        |e| e.apply(pod_obj),
        with_pod,
        "new pod",
        &text,
    )?;

    // A second pod with the same label set as an existing one.
    let twin = decode(&render(&[pod_doc(i + 1, &s.pods[0], None)]));
    let mut with_twin = objects.clone();
    with_twin.extend(twin.iter().cloned());
    let twin_obj = twin[0].clone();
    check_incremental(
        base.clone(),
        |e| e.apply(twin_obj),
        with_twin,
        "pod with an existing label set",
        &text,
    )?;

    // Several new pods in a row, each compared with a rebuild.
    let mut engine = base.clone();
    let mut expected = objects.clone();
    for (j, p) in s.pods.iter().enumerate().take(3) {
        let mut p = p.clone();
        p.http_port = None;
        p.dns = false;
        p.metrics = false;
        p.ns = (p.ns + j + 1) % NAMESPACES.len();
        let value = format!("v{j}");
        let pod = decode(&render(&[pod_doc(i + 2 + j, &p, Some(("extra", &value)))]));
        expected.extend(pod.iter().cloned());
        let next = engine.clone();
        let pod_obj = pod[0].clone();
        check_incremental(
            next,
            |e| e.apply(pod_obj.clone()),
            expected.clone(),
            &format!("new pod #{j} in a row"),
            &text,
        )?;
        engine.apply(pod_obj);
    }

    // Relabel and delete an existing pod.
    let mut moved = extra.clone();
    moved.ns = s.pods[0].ns;
    let relabeled = decode(&render(&[pod_doc(0, &moved, Some(("extra", "moved")))]));
    let key = s.pod_keys()[0].clone();
    let without_pod: Vec<Object> = objects
        .iter()
        .filter(|o| !matches!(o, Object::Pod(p) if p.key() == key))
        .cloned()
        .collect();
    let mut with_relabel = without_pod.clone();
    with_relabel.extend(relabeled.iter().cloned());
    let r = relabeled[0].clone();
    check_incremental(
        base.clone(),
        |e| e.apply(r),
        with_relabel,
        "relabel pod",
        &text,
    )?;
    let k2 = key.clone();
    check_incremental(
        base.clone(),
        move |e| e.delete_pod(&k2),
        without_pod,
        "delete pod",
        &text,
    )?;

    // Delete and add each policy.
    let ids: Vec<PolicyId> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Policy(p) => Some(p.id.clone()),
            _ => None,
        })
        .collect();
    for id in ids {
        let without: Vec<Object> = objects
            .iter()
            .filter(|o| !matches!(o, Object::Policy(p) if p.id == id))
            .cloned()
            .collect();
        let id2 = id.clone();
        check_incremental(
            base.clone(),
            move |e| e.delete_policy(&id2),
            without.clone(),
            &format!("delete {id}"),
            &text,
        )?;
        let policy = objects
            .iter()
            .find(|o| matches!(o, Object::Policy(p) if p.id == id))
            .cloned()
            .expect("policy");
        check_incremental(
            Engine::from_objects(without),
            move |e| e.apply(policy),
            objects.clone(),
            &format!("add {id}"),
            &text,
        )?;
    }
    Ok(())
}

// Case counts are bounded so that the file runs in a few seconds of CPU in
// a debug build (well under 30 s).
proptest! {
    #![proptest_config(ProptestConfig { cases: 192, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn resolver_agrees_with_naive(s in scenario(6, 4)) {
        check_agreement(&s)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn verdicts_do_not_depend_on_rule_order(s in scenario(5, 4), seed in any::<u64>()) {
        check_order_independence(&s, seed)?;
    }

    #[test]
    fn incremental_updates_equal_rebuild(
        s in scenario(5, 3),
        extra in pod_spec(),
        extra_named in prop::bool::weighted(0.2),
    ) {
        check_incremental_updates(&s, &extra, extra_named)?;
    }
}
