//! Datapath events as Hubble flows: attribution for an allow, a deny-rule
//! drop and a default-deny drop, over the API (`flows`) and the web
//! endpoints (service map, metrics); audit mode delivers and reports AUDIT.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use palisade_agent::flows::FlowsPage;
use palisade_agent::traffic::{Outcome, Servers, tcp_probe, wait_until};
use palisade_agent::{Agent, Client, Request};
use palisade_flow::flow::Verdict;

const BACKEND: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: backend-ingress
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      role: backend
  ingress:
    - fromEndpoints:
        - matchLabels:
            role: frontend
      toPorts:
        - ports:
            - port: "80"
              protocol: TCP
  ingressDeny:
    - fromEndpoints:
        - matchLabels:
            role: other
      toPorts:
        - ports:
            - port: "80"
              protocol: TCP
"#;

const AUDITED: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: backend-audit
  namespace: default
  annotations:
    palisade.io/audit: "true"
spec:
  endpointSelector:
    matchLabels:
      role: backend
  ingress:
    - fromEndpoints:
        - matchLabels:
            role: frontend
"#;

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect web");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn flows(client: &Client) -> Vec<serde_json::Value> {
    let page: FlowsPage = client
        .request(&Request::Flows {
            since: None,
            last: None,
        })
        .expect("flows");
    page.flows
        .iter()
        .filter_map(|f| f.flow.as_ref())
        .map(|f| serde_json::to_value(f).expect("json"))
        .collect()
}

fn has(flows: &[serde_json::Value], pred: impl Fn(&serde_json::Value, &str) -> bool) -> bool {
    flows.iter().any(|f| pred(f, &f.to_string()))
}

#[test]
fn agent_flows_are_attributed_and_served() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let names = Names::new("flows");
    let _cleanup = Cleanup(names.clone());
    let socket = names.state_dir.join("agent.sock");
    let mut cfg = names.config("node-f", "10.231.0.0/24");
    cfg.socket = Some(socket.clone());
    cfg.web_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let agent = Agent::start(cfg).expect("agent starts");
    let web = agent.web_addr().expect("web endpoints");
    assert!(web.ip().is_loopback());
    let (fe_ns, _) = pod(&agent, "default", "frontend", &[("role", "frontend")]);
    let (other_ns, _) = pod(&agent, "default", "other", &[("role", "other")]);
    let (be_ns, be_ip) = pod(&agent, "default", "backend", &[("role", "backend")]);
    let _srv = Servers::start(&be_ns, &[80, 81], &[]).expect("servers");
    agent.apply_text("backend.yaml", BACKEND).expect("policy");

    assert_eq!(tcp_probe(&fe_ns, be_ip, 80, T), Outcome::Allowed);
    assert_eq!(tcp_probe(&other_ns, be_ip, 80, T), Outcome::Dropped);
    assert_eq!(tcp_probe(&fe_ns, be_ip, 81, T), Outcome::Dropped);

    let client = Client::new(&socket);
    let allow = |f: &serde_json::Value, s: &str| {
        f["verdict"] == "FORWARDED"
            && f["destination"]["pod_name"] == "backend"
            && f["source"]["pod_name"] == "frontend"
            && f["traffic_direction"] == "INGRESS"
            && s.contains("backend-ingress")
            && s.contains("spec.ingress[0]")
    };
    let deny_rule = |f: &serde_json::Value, s: &str| {
        f["verdict"] == "DROPPED"
            && f["drop_reason"] == 181
            && f["source"]["pod_name"] == "other"
            && s.contains("spec.ingressDeny[0]")
    };
    let default_deny = |f: &serde_json::Value, s: &str| {
        f["verdict"] == "DROPPED"
            && f["drop_reason"] == 133
            && f["source"]["pod_name"] == "frontend"
            && f["ingress_denied_by"][0]["name"] == "backend-ingress"
            && s.contains("(default deny)")
    };
    let ok = wait_until(Duration::from_secs(5), || {
        let fs = flows(&client);
        has(&fs, allow) && has(&fs, deny_rule) && has(&fs, default_deny)
    });
    assert!(ok, "{:#?}", flows(&client));

    // --since paging: nothing new after `next`.
    let page: FlowsPage = client
        .request(&Request::Flows {
            since: None,
            last: Some(1),
        })
        .expect("flows");
    assert_eq!(page.flows.len(), 1);

    let map = http_get(web, "/");
    assert!(map.starts_with("HTTP/1.1 200"), "{map}");
    for p in ["frontend", "backend", "other"] {
        assert!(map.contains(p), "service map lacks {p}");
    }
    let metrics = http_get(web, "/metrics");
    assert!(
        metrics.contains("palisade_flows_processed_total"),
        "{metrics}"
    );
    assert!(metrics.contains("palisade_drop_count_total"), "{metrics}");
    let api = http_get(web, "/api/flows?last=2");
    assert!(api.contains("\"flow\""), "{api}");
    agent.destroy();
}

#[test]
fn audit_mode_delivers_and_reports_audit() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let names = Names::new("audit");
    let _cleanup = Cleanup(names.clone());
    let agent = Agent::start(names.config("node-u", "10.232.0.0/24")).expect("agent starts");
    let (fe_ns, _) = pod(&agent, "default", "frontend", &[("role", "frontend")]);
    let (other_ns, _) = pod(&agent, "default", "other", &[("role", "other")]);
    let (be_ns, be_ip) = pod(&agent, "default", "backend", &[("role", "backend")]);
    let _srv = Servers::start(&be_ns, &[80], &[]).expect("servers");
    agent.apply_text("audit.yaml", AUDITED).expect("policy");

    // Audited: nothing is enforced, both connect.
    assert_eq!(tcp_probe(&fe_ns, be_ip, 80, T), Outcome::Allowed);
    assert_eq!(tcp_probe(&other_ns, be_ip, 80, T), Outcome::Allowed);
    let audited = || {
        agent.flows().page(None, None).flows.into_iter().any(|r| {
            r.flow.as_ref().is_some_and(|f| {
                f.verdict == Verdict::Audit
                    && f.source.as_ref().is_some_and(|s| s.pod_name == "other")
                    && f.ingress_denied_by
                        .iter()
                        .any(|p| p.name == "backend-audit")
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), audited),
        "{:#?}",
        agent.flows().page(None, None)
    );
    // The allowed peer is not reported as AUDIT.
    assert!(!agent.flows().page(None, None).flows.iter().any(|r| {
        r.flow.as_ref().is_some_and(|f| {
            f.verdict == Verdict::Audit
                && f.source.as_ref().is_some_and(|s| s.pod_name == "frontend")
        })
    }));
    let text = agent.flows().metrics().encode();
    assert!(text.contains("verdict=\"AUDIT\""), "{text}");
    agent.destroy();
}
