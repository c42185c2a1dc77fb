//! The DNS proxy inside the agent (root; everything removed on drop, also
//! on failure): a real dnsmasq (Debian `dnsmasq-base`) in a pod answers
//! `api.example.com` with an address that lives in a namespace the test
//! creates outside the cluster. A client whose policy has a DNS rule and
//! `toFQDNs: api.example.com` cannot reach that address before resolving
//! it; after resolving it through the agent's DNS proxy the very first
//! connection is allowed (learned before the answer is released). A name
//! the DNS rule does not allow gets REFUSED, the cache is served by
//! `fqdn-cache-list`, and the queries are L7 DNS flows. HTTP rules on the
//! learned name are enforced by the agent's L7 proxy process, which gets
//! the learned names in its feed.

#[path = "../../palisade-agent/tests/common/mod.rs"]
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::*;
use palisade_agent::Agent;
use palisade_agent::api::Request;
use palisade_agent::traffic::{
    Dnsmasq, HttpServer, Outcome, Servers, dns_query, http_request, tcp_probe, wait_until,
};
use palisade_datapath::netns::{self, PodSpec};
use palisade_flow::flow::{FlowType, Verdict};
use palisade_proxy::dns::CacheRow;
use palisade_proxy::dns::wire::{self, Rdata};

const API_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const PORT: u16 = 8080;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints:
        - matchLabels: {io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}
      toPorts:
        - ports: [{port: "53", protocol: UDP}]
          rules:
            dns:
              - matchPattern: "*.example.com"
    - toFQDNs:
        - matchName: api.example.com
      toPorts:
        - ports: [{port: "8080", protocol: TCP}]
    - toFQDNs:
        - matchName: api.example.com
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: GET, path: "/v1/.*"}]
"#;

#[test]
fn to_fqdns_through_the_agents_dns_proxy() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let names = Names::new("dns");
    let _cleanup = Cleanup(names.clone());
    let mut cfg = names.config("node-dns", "10.235.0.0/24");
    cfg.l7_proxy = Some(palisade_proxy::ProxyConfig::default());
    cfg.proxy_program = Some(env!("CARGO_BIN_EXE_palisade").into());
    let agent = Agent::start(cfg).expect("agent starts");

    // The address api.example.com resolves to: a namespace outside the
    // cluster (named after the node namespace, so purge removes it).
    let world_ns = format!("{}-world", names.node_netns);
    netns::create_pod(
        Some(&names.node_netns),
        &PodSpec {
            netns: world_ns.clone(),
            host_ifname: format!("wld{}", std::process::id() % 100_000),
            ip: API_IP,
            host_mac: [0x02, 0xaa, 0, 0, 0, 1],
            pod_mac: [0x02, 0xab, 0, 0, 0, 1],
        },
    )
    .expect("world namespace");
    let _srv = Servers::start(&world_ns, &[PORT], &[]).expect("server");
    let _http = HttpServer::start(&world_ns, 80).expect("http server");

    let (dns_ns, dns_ip) = pod(&agent, "kube-system", "coredns", &[("k8s-app", "kube-dns")]);
    let (client_ns, _) = pod(&agent, "default", "client", &[("app", "client")]);
    let _dns = Dnsmasq::start(
        &dns_ns,
        dns_ip,
        "192.0.2.10 api.example.com\n192.0.2.66 evil.example.net\n",
        "api.example.com",
    )
    .expect("dnsmasq (Debian package dnsmasq-base)");
    let t = Duration::from_secs(1);
    // no policy yet: reachable
    assert!(tcp_probe(&client_ns, API_IP, PORT, t).delivered());
    agent
        .apply_text("client-egress.yaml", POLICY)
        .expect("policy");

    // before resolving: denied
    let before = tcp_probe(&client_ns, API_IP, PORT, t);
    assert_eq!(before, Outcome::Dropped, "{before}");

    // resolve through the proxy: the first connection is allowed
    let m = dns_query(&client_ns, dns_ip, "api.example.com", 0x4242).expect("an answer");
    let first = tcp_probe(&client_ns, API_IP, PORT, t);
    assert_eq!(first, Outcome::Allowed, "{first}");
    assert_eq!((m.header.id, m.header.rcode), (0x4242, wire::RCODE_NOERROR));
    let ips: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match r.data {
            Rdata::A(a) => Some(IpAddr::V4(a)),
            _ => None,
        })
        .collect();
    assert_eq!(ips, vec![IpAddr::V4(API_IP)]);
    // HTTP to the learned name: the proxy process knows its identity
    let get = |path: &str| {
        http_request(
            &client_ns,
            API_IP,
            80,
            "GET",
            path,
            &[],
            Duration::from_secs(2),
        )
        .map(|a| a.status)
        .unwrap_or(0)
    };
    assert_eq!(get("/v1/items"), 200);
    assert_eq!(get("/admin"), 403);

    // a name the DNS rule does not allow: REFUSED by the proxy
    let m = dns_query(&client_ns, dns_ip, "evil.example.net", 7).expect("an answer");
    assert_eq!(m.header.rcode, wire::RCODE_REFUSED);

    // the cache, as `palisade fqdn cache list` asks for it
    let r = agent.handle(Request::FqdnCacheList);
    assert!(r.ok, "{r:?}");
    let rows: Vec<CacheRow> = serde_json::from_value(r.result.expect("rows")).expect("rows");
    let row = rows
        .iter()
        .find(|r| r.fqdn == "api.example.com." && r.endpoint == "default/client")
        .unwrap_or_else(|| panic!("a cache row: {rows:?}"));
    assert_eq!(row.ips, vec![IpAddr::V4(API_IP)]);

    // a policy change (engine rebuilt) keeps what was learned
    agent
        .apply_text(
            "other.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n",
        )
        .expect("apply");
    assert_eq!(tcp_probe(&client_ns, API_IP, PORT, t), Outcome::Allowed);

    // the queries are L7 DNS flows
    let dns_flow = |verdict: Verdict, query: &str| {
        agent.flows().page(None, None).flows.iter().any(|r| {
            r.flow.as_ref().is_some_and(|f| {
                f.flow_type == FlowType::L7
                    && f.verdict == verdict
                    && f.l7
                        .as_ref()
                        .and_then(|l| l.dns.as_ref())
                        .is_some_and(|d| d.query == query)
                    && f.source.as_ref().is_some_and(|s| s.pod_name == "client")
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(3), || dns_flow(
            Verdict::Forwarded,
            "api.example.com."
        ) && dns_flow(
            Verdict::Dropped,
            "evil.example.net."
        )),
        "{:#?}",
        agent.flows().page(None, None)
    );
    // and the DNS proxy's statistics
    let metrics = agent.flows().metrics().encode();
    for line in [
        "palisade_dns_proxy_queries_total{protocol=\"dns\",verdict=\"FORWARDED\"}",
        "palisade_dns_proxy_queries_total{protocol=\"dns\",verdict=\"DROPPED\"}",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // The agent stops, and its DNS proxy with it (it removes its TPROXY
    // table): DNS rules fail closed. The guard drops the queries that would
    // now reach the resolver unfiltered, the name the rule refuses included.
    agent.shutdown();
    let unanswered = dns_query(&client_ns, dns_ip, "evil.example.net", 8);
    assert!(
        unanswered.is_err(),
        "a query with the DNS proxy down must get no answer: {unanswered:?}"
    );
    // A new agent on the same node and state takes the queries again.
    let mut cfg = names.config("node-dns", "10.235.0.0/24");
    cfg.l7_proxy = Some(palisade_proxy::ProxyConfig::default());
    cfg.proxy_program = Some(env!("CARGO_BIN_EXE_palisade").into());
    let agent = Agent::start(cfg).expect("agent restarts");
    let m = dns_query(&client_ns, dns_ip, "evil.example.net", 8)
        .expect("an answer from the new DNS proxy");
    assert_eq!(m.header.rcode, wire::RCODE_REFUSED);
    // The DNS rule goes: the DNS proxy is fed once more and drops its
    // redirection, the guard lets the queries through, and the resolver
    // answers them itself.
    agent
        .delete_text("client-egress.yaml", POLICY)
        .expect("delete");
    let m =
        dns_query(&client_ns, dns_ip, "evil.example.net", 8).expect("an answer from the resolver");
    assert_eq!(m.header.rcode, wire::RCODE_NOERROR);
    agent.destroy();
}
