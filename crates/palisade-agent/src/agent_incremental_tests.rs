//! The agent's incremental pod path equals a from-scratch build: after any
//! sequence of local pod adds and deletes applied in place to the engines
//! (enforced and full view), every endpoint map, identity and ipcache entry
//! equals `build_engine` over the same sources.

use super::*;
use crate::sources::{SourceFile, parse_all};

const NODE: &str = "local";

fn config() -> AgentConfig {
    AgentConfig {
        node_name: NODE.into(),
        ..Default::default()
    }
}

fn pod_docs(from: usize, to: usize) -> String {
    (from..to)
        .map(|i| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: r{i}, namespace: default, labels: {{app: svc-{i}, role: {}}}}}\nspec: {{nodeName: remote}}\nstatus: {{podIP: 10.100.0.{}}}\n",
                if i % 2 == 0 { "local" } else { "remote" },
                i + 1
            )
        })
        .collect()
}

fn parse(name: &str, text: String) -> Vec<Sourced> {
    parse_all(
        &[SourceFile {
            name: name.into(),
            text,
        }],
        &Default::default(),
    )
    .expect("valid manifests")
}

fn sources(remote: usize) -> Vec<Sourced> {
    let mut text = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {kubernetes.io/metadata.name: default}}\n",
    );
    text.push_str("---\napiVersion: v1\nkind: Node\nmetadata: {name: remote}\nstatus: {addresses: [{type: InternalIP, address: 192.168.50.2}]}\n");
    text.push_str(
        r#"---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: local-ingress, namespace: default}
spec:
  endpointSelector: {matchLabels: {role: local}}
  ingress:
    - fromEndpoints: [{matchLabels: {role: local}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: audited-egress
  namespace: default
  annotations: {palisade.io/audit: "true"}
spec:
  endpointSelector: {matchLabels: {role: local}}
  egress:
    - toEndpoints: [{matchLabels: {app: svc-1}}]
"#,
    );
    text.push_str(&pod_docs(0, remote));
    parse("cluster.yaml", text)
}

fn record(i: u32, labels: &[(&str, &str)]) -> PodRecord {
    PodRecord {
        namespace: "default".into(),
        name: format!("l{i}"),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ports: vec![],
        service_account: "default".into(),
        ip: Ipv4Addr::new(10, 246, 0, 10 + i as u8),
        ep_id: i + 1,
        netns: format!("n-{i}"),
        host_ifname: format!("lxc{i}"),
    }
}

/// Everything observable of an engine's resolution.
fn snapshot(e: &Engine) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = e
        .endpoints()
        .map(|(k, id, m)| {
            serde_json::json!({
                "pod": k,
                "identity": id,
                "entries": m.entries.iter().map(|(k, e)| format!("{k:?} {e:?}")).collect::<Vec<_>>(),
                "ingress": format!("{:?}", m.ingress),
                "egress": format!("{:?}", m.egress),
                "contributions": m.contributions.keys().map(|k| format!("{k:?}")).collect::<Vec<_>>(),
            })
        })
        .collect();
    let identities: Vec<String> = e
        .identities()
        .iter()
        .map(|i| format!("{} {:?}", i.id, i.labels))
        .collect();
    // The ipcache iterates in hash order: sorted.
    let mut ipcache: Vec<String> = e
        .ipcache()
        .iter()
        .map(|(c, id)| format!("{c:?} {id}"))
        .collect();
    ipcache.sort();
    serde_json::json!({"endpoints": endpoints, "identities": identities, "ipcache": ipcache})
}

/// The first difference between two snapshots (a short message).
fn first_difference(a: &serde_json::Value, b: &serde_json::Value) -> Option<String> {
    for part in ["endpoints", "identities", "ipcache"] {
        let (x, y) = (&a[part], &b[part]);
        if x != y {
            let (xs, ys) = (x.as_array()?, y.as_array()?);
            if xs.len() != ys.len() {
                return Some(format!("{part}: {} vs {} items", xs.len(), ys.len()));
            }
            let i = xs.iter().zip(ys).position(|(p, q)| p != q)?;
            return Some(format!("{part}[{i}]: {} vs {}", xs[i], ys[i]));
        }
    }
    None
}

fn assert_same(step: &str, inc: &(Engine, Option<Engine>), scratch: &(Engine, Option<Engine>)) {
    if let Some(d) = first_difference(&snapshot(&inc.0), &snapshot(&scratch.0)) {
        panic!("{step}: the enforced view differs from a from-scratch build: {d}");
    }
    let (Some(fi), Some(fs)) = (&inc.1, &scratch.1) else {
        panic!("{step}: the audited policy makes a full view in both");
    };
    if let Some(d) = first_difference(&snapshot(fi), &snapshot(fs)) {
        panic!("{step}: the full view differs from a from-scratch build: {d}");
    }
}

#[test]
fn pod_adds_and_deletes_in_place_equal_a_from_scratch_build() {
    let cfg = config();
    let dir = sources(40);
    let mut pods = BTreeMap::new();
    let first = record(0, &[("role", "local"), ("idx", "l0")]);
    pods.insert(first.key(), first);
    let mut inc = build_engine(&cfg, &dir, &[], &pods);
    let peers = |pods: &BTreeMap<String, PodRecord>| {
        pods.values()
            .map(|r| (r.key(), r.ip, r.ep_id))
            .collect::<Vec<_>>()
            .into_iter()
    };
    let mut book = PeerBook::build(&inc.0, inc.1.as_ref(), peers(&pods));
    let mut deltas_seen = 0;
    let script: Vec<(bool, u32)> = vec![
        (true, 1),
        (true, 2),
        (true, 3),
        (false, 2),
        (true, 4),
        (true, 5),
        (false, 0),
        (false, 4),
        (true, 2),
        (true, 6),
    ];
    for (add, i) in script {
        let step = format!("{} l{i}", if add { "add" } else { "delete" });
        if add {
            // Same labels twice (l2/l5 share `role=local,tier=x`): the
            // second pod reuses an identity.
            let labels: Vec<(&str, &str)> = match i {
                2 | 5 => vec![("role", "local"), ("tier", "x")],
                6 => vec![("role", "other")],
                _ => vec![("role", "local")],
            };
            let mut rec = record(i, &labels);
            if ![2, 5].contains(&i) {
                rec.labels.insert("idx".into(), format!("l{i}"));
            }
            let pod = rec.to_pod(NODE, None);
            pods.insert(rec.key(), rec);
            let d = add_pod_incremental(&mut inc.0, inc.1.as_mut(), &pod)
                .expect("a new pod in a known namespace takes the incremental path");
            deltas_seen += d.len();
            assert!(d.contains(&pod.key()), "{step}: the new endpoint's delta");
            // The flow tables as the agent updates them on this path.
            book.update(
                &inc.0,
                inc.1.as_ref(),
                inc.0.endpoint_identity(&pod.key()),
                peers(&pods).filter(|(k, _, _)| d.contains(k)),
            );
            let rebuilt = PeerBook::build(&inc.0, inc.1.as_ref(), peers(&pods));
            assert_eq!(book.identity_labels, rebuilt.identity_labels, "{step}");
            assert_eq!(book.selected_by, rebuilt.selected_by, "{step}");
            assert_eq!(
                format!("{:?}", book.pods_by_ip),
                format!("{:?}", rebuilt.pods_by_ip),
                "{step}"
            );
            assert_eq!(
                book.audit_maps.keys().collect::<Vec<_>>(),
                rebuilt.audit_maps.keys().collect::<Vec<_>>(),
                "{step}"
            );
        } else {
            let key = format!("default/l{i}");
            pods.remove(&key);
            inc.0.delete_pod(&key);
            if let Some(f) = inc.1.as_mut() {
                f.delete_pod(&key);
            }
            // The delete path reconciles in full and rebuilds the tables.
            book = PeerBook::build(&inc.0, inc.1.as_ref(), peers(&pods));
        }
        let scratch = build_engine(&cfg, &dir, &[], &pods);
        assert_same(&step, &inc, &scratch);
    }
    assert!(deltas_seen > 6, "adds touch the other endpoints too");
}

#[test]
fn incremental_add_declines_what_needs_a_rebuild() {
    let cfg = config();
    let dir = sources(4);
    let mut pods = BTreeMap::new();
    // No endpoint yet: the engine would rebuild.
    let mut empty = build_engine(&cfg, &dir, &[], &pods);
    let first = record(0, &[("role", "local")]);
    assert!(
        add_pod_incremental(&mut empty.0, empty.1.as_mut(), &first.to_pod(NODE, None)).is_none()
    );
    pods.insert(first.key(), first);
    let mut e = build_engine(&cfg, &dir, &[], &pods);
    let before = snapshot(&e.0);
    // A namespace the cluster state does not hold (the agent synthesises it).
    let mut other = record(1, &[("role", "local")]);
    other.namespace = "other".into();
    assert!(add_pod_incremental(&mut e.0, e.1.as_mut(), &other.to_pod(NODE, None)).is_none());
    // Named ports.
    let mut named = record(2, &[("role", "local")]);
    named.ports = vec![crate::api::PortSpec {
        name: Some("http".into()),
        port: 80,
        protocol: "TCP".into(),
    }];
    assert!(add_pod_incremental(&mut e.0, e.1.as_mut(), &named.to_pod(NODE, None)).is_none());
    // A pod that exists already.
    assert!(
        add_pod_incremental(
            &mut e.0,
            e.1.as_mut(),
            &record(0, &[("role", "x")]).to_pod(NODE, None)
        )
        .is_none()
    );
    assert_eq!(snapshot(&e.0), before, "declined adds change nothing");
    // Declared pods and namespaces in the sources.
    assert!(declared_pod(&dir, &[], "default/r1").is_some());
    assert!(declared_pod(&dir, &[], "default/l0").is_none());
    assert!(namespace_declared(&dir, &[], "default"));
    assert!(!namespace_declared(&dir, &[], "other"));
}

fn refs(v: &[Sourced]) -> Vec<&Sourced> {
    v.iter().collect()
}

#[test]
fn a_sources_change_that_only_adds_pods_applies_in_place() {
    let cfg = config();
    let old = sources(6);
    // A second file with six more pods (a file of its own, as the
    // positions of objects are part of what is compared).
    let mut new = old.clone();
    new.extend(parse("more.yaml", pod_docs(6, 12)));
    let mut pods = BTreeMap::new();
    let first = record(0, &[("role", "local")]);
    pods.insert(first.key(), first);
    let added = pods_added(&refs(&old), &refs(&new), &pods).expect("only pods are added");
    assert_eq!(added.len(), 6);
    let mut inc = build_engine(&cfg, &old, &[], &pods);
    let mut touched = BTreeSet::new();
    for p in &added {
        touched.extend(add_pod_incremental(&mut inc.0, inc.1.as_mut(), p).expect("in place"));
    }
    assert!(touched.contains("default/l0"), "role=local pods reach l0");
    assert_same(
        "pods added by the sources",
        &inc,
        &build_engine(&cfg, &new, &[], &pods),
    );

    // Anything else is a rebuild: removals, changed objects, a local key.
    assert!(
        pods_added(&refs(&new), &refs(&old), &pods).is_none(),
        "pods removed"
    );
    let mut changed = new.clone();
    let last = changed.len() - 1;
    let Object::Pod(p) = &mut changed[last].object else {
        panic!("the last object is a pod");
    };
    p.labels.insert("x".into(), "y".into());
    assert!(
        pods_added(&refs(&new), &refs(&changed), &pods).is_none(),
        "a pod changed"
    );
    let no_policy: Vec<Sourced> = new
        .iter()
        .filter(|s| !matches!(s.object, Object::Policy(_)))
        .cloned()
        .collect();
    assert!(
        pods_added(&refs(&new), &refs(&no_policy), &pods).is_none(),
        "policies removed"
    );
    let mut shadow = new.clone();
    let mut local = record(0, &[("role", "local")]).to_pod("remote", None);
    local.ips = vec![Ipv4Addr::new(10, 100, 9, 9).into()];
    shadow.push(Sourced {
        key: "Pod/default/l0".into(),
        file: "x.yaml".into(),
        index: 0,
        text: "".into(),
        object: Object::Pod(local),
    });
    assert!(
        pods_added(&refs(&new), &refs(&shadow), &pods).is_none(),
        "a declared local pod"
    );
    assert_eq!(
        pods_added(&refs(&new), &refs(&new), &pods).map(|a| a.len()),
        Some(0)
    );
}

/// The L7 proxy process rebuilds its engine from the feed the agent
/// writes: it must resolve exactly what the agent's enforced view does
/// (audited policies left out, local pods with their IPAM addresses and
/// merged labels, API objects, learned names).
#[test]
fn the_proxy_feed_resolves_to_the_agents_enforced_view() {
    let cfg = config();
    let dir = sources(6);
    let api = parse(
        "api.yaml",
        r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {role: local}}
  egress:
    - toFQDNs: [{matchPattern: "*.example.com"}]
      toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/v1/.*"}]}}]
---
apiVersion: v1
kind: Pod
metadata: {name: l1, namespace: default, labels: {declared: "yes"}}
spec: {nodeName: other}
"#
        .into(),
    );
    let mut pods = BTreeMap::new();
    for i in 0..3 {
        let r = record(i, &[("role", "local"), ("idx", &format!("l{i}"))]);
        pods.insert(r.key(), r);
    }
    let (mut agent, _) = build_engine(&cfg, &dir, &api, &pods);
    agent.learn_fqdn("api.example.com", "192.0.2.7".parse().unwrap());
    agent.learn_fqdn("www.example.com", "192.0.2.8".parse().unwrap());
    let fqdns = vec![
        palisade_proxy::feed::FeedFqdn {
            name: "api.example.com".into(),
            ips: vec!["192.0.2.7".parse().unwrap()],
        },
        palisade_proxy::feed::FeedFqdn {
            name: "www.example.com".into(),
            ips: vec!["192.0.2.8".parse().unwrap()],
        },
    ];
    let feed = feed_of(&cfg, &dir, &api, &pods, fqdns);
    // Through JSON, as the proxy reads it.
    let text = serde_json::to_string(&feed).expect("json");
    let read = palisade_proxy::PolicyFeed::from_json("feed.json", &text).expect("feed");
    let proxy = read.build(1).expect("the feed builds");
    if let Some(d) = first_difference(&snapshot(&agent), &snapshot(proxy.engine())) {
        panic!("the proxy's engine differs from the agent's enforced view: {d}");
    }
    // The audited policy is not enforced by the proxy either, and every
    // source object is a reference to its file (no re-rendering).
    assert!(
        proxy
            .engine()
            .policies()
            .all(|p| p.id.name != "audited-egress")
    );
    assert_eq!(read.files.len(), 2);
}
