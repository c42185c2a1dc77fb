//! `trace::l7_verdict` (the L7 matcher `palisade policy trace` and the
//! proxies share) on one redirected connection whose port rule holds 10,
//! 100 or 1,000 HTTP rules, the shape `bench/l7-proxy.sh` uses: N-1 rules
//! `GET /api/v1/resource-i/[0-9]+` with an `X-Tenant: ti` header and a last
//! rule `GET /bench`.
//!
//! - `allowed_last`: `GET /bench` (only the last rule admits it; the worst
//!   case of a rule-by-rule scan);
//! - `allowed_header`: `GET /api/v1/resource-{N/2}/42` with its tenant
//!   header (path, method and header all checked);
//! - `denied`: `GET /not-allowed` (no rule admits it).
//!
//! `http_rules` isolates the matcher of one list on `GET /bench`: the
//! compiled index (`HttpRules::any_match`, what `l7_verdict` uses) side by
//! side with the rule-by-rule scan of `HttpRule::matches` it replaced,
//! and what compiling the index costs (once per list).

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use palisade_policy::api::{Direction, L7Kind, L7Rules};
use palisade_policy::engine::Engine;
use palisade_policy::identity::NumericIdentity;
use palisade_policy::l7::{HttpRequest, HttpRule, HttpRules, L7Request};
use palisade_policy::manifest::{Options, parse_file};
use palisade_policy::mapstate::{L7Part, PolicyMap};
use palisade_policy::trace::l7_verdict;
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

const TCP: u8 = 6;
const SERVER: &str = "default/server";
const CLIENT: &str = "default/client";

fn manifests(rules: usize) -> String {
    let mut y = String::from(
        "apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {kubernetes.io/metadata.name: default}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 198.18.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: default, labels: {app: server}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 198.18.0.3}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: \"80\", protocol: TCP}]
          rules:
            http:
",
    );
    for i in 1..rules {
        let _ = writeln!(
            y,
            "              - {{method: GET, path: \"/api/v1/resource-{i}/[0-9]+\", headers: [\"X-Tenant: t{i}\"]}}"
        );
    }
    y.push_str("              - {method: GET, path: \"/bench\"}\n");
    y
}

fn engine(rules: usize) -> Engine {
    let objects = parse_file("bench.yaml", &manifests(rules), &Options::default())
        .into_iter()
        .map(|d| {
            assert!(d.errors.is_empty(), "{:?}", d.errors);
            d.object.expect("object")
        });
    Engine::from_objects(objects)
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> L7Request {
    L7Request::Http(HttpRequest {
        method: method.into(),
        path: path.into(),
        host: Some("198.18.0.3".into()),
        headers: [("user-agent", "wrk"), ("accept", "*/*")]
            .iter()
            .chain(headers)
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
    })
}

fn verdict(map: &PolicyMap, client: NumericIdentity, req: &L7Request) -> bool {
    l7_verdict(map, client, Direction::Ingress, TCP, 80, L7Kind::Http, req)
        .expect("an HTTP verdict")
        .allowed
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("l7_verdict");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    for rules in [10usize, 100, 1000] {
        let e = engine(rules);
        let map = e.endpoint_map(SERVER).expect("server map");
        let client = e.endpoint_identity(CLIENT).expect("client identity");
        let mid = rules / 2;
        let cases = [
            ("allowed_last", request("GET", "/bench", &[]), true),
            (
                "allowed_header",
                request(
                    "GET",
                    &format!("/api/v1/resource-{mid}/42"),
                    &[("x-tenant", &format!("t{mid}"))],
                ),
                true,
            ),
            ("denied", request("GET", "/not-allowed", &[]), false),
        ];
        for (name, req, expect) in &cases {
            assert_eq!(verdict(map, client, req), *expect, "{name} at {rules}");
            g.bench_with_input(BenchmarkId::new(*name, rules), req, |b, req| {
                b.iter(|| verdict(map, client, black_box(req)))
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("http_rules");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    for rules in [10usize, 100, 1000] {
        let e = engine(rules);
        let map = e.endpoint_map(SERVER).expect("server map");
        let list = map
            .contributions
            .values()
            .flatten()
            .find_map(|c| match &c.l7 {
                L7Part::Rules(r) => match r.as_ref() {
                    L7Rules::Http(rs) => Some(rs),
                    _ => None,
                },
                L7Part::AllowAll => None,
            })
            .expect("the HTTP rules");
        assert_eq!(list.len(), rules);
        list.prepare();
        let L7Request::Http(req) = request("GET", "/bench", &[]) else {
            unreachable!()
        };
        g.bench_with_input(BenchmarkId::new("indexed", rules), &req, |b, req| {
            b.iter(|| list.any_match(black_box(req)))
        });
        g.bench_with_input(BenchmarkId::new("scan", rules), &req, |b, req| {
            b.iter(|| list.iter().any(|r| r.matches(black_box(req))))
        });
        // What the index costs to build, once per list (the proxy builds it
        // with its snapshot; trace on first use).
        let plain: Vec<HttpRule> = list.to_vec();
        g.bench_function(BenchmarkId::new("compile", rules), |b| {
            b.iter_batched(
                || HttpRules::new(plain.clone()),
                |l| {
                    l.prepare();
                    l
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
