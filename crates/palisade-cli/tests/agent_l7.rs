//! The agent's L7 proxy process: the seed's `example-policy` HTTP rule on
//! real pods and real HTTP, decided by the proxy the agent feeds, and the
//! requests as L7 flows with the deciding rule.

#[path = "../../palisade-agent/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;
use palisade_agent::Agent;
use palisade_agent::traffic::{HttpServer, http_request, wait_until};
use palisade_flow::flow::{FlowType, Verdict};

const EXAMPLE_POLICY: &str = include_str!("data/example-policy-l7.yaml");

#[test]
fn http_rules_enforced_by_the_agents_proxy() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let names = Names::new("l7");
    let _cleanup = Cleanup(names.clone());
    let mut cfg = names.config("node-l7", "10.234.0.0/24");
    cfg.l7_proxy = Some(palisade_proxy::ProxyConfig::default());
    cfg.proxy_program = Some(env!("CARGO_BIN_EXE_palisade").into());
    let agent = Agent::start(cfg).expect("agent starts");
    let (fe_ns, _) = pod(&agent, "default", "frontend", &[("app", "frontend")]);
    let (other_ns, _) = pod(&agent, "default", "other", &[("app", "other")]);
    let (app_ns, app_ip) = pod(&agent, "default", "myapp", &[("app", "myapp")]);
    let _srv = HttpServer::start(&app_ns, 80).expect("http server");
    agent
        .apply_text("example-policy.yaml", EXAMPLE_POLICY)
        .expect("policy");
    let t = Duration::from_secs(2);
    // The change was timed up to enforced (L7 proxy process confirmed).
    let metrics = agent.flows().metrics().encode();
    let count = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("palisade_{name}_count ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(count("policy_apply_to_enforced_seconds") >= 1, "{metrics}");
    assert!(
        count("endpoint_regeneration_time_seconds") >= 1,
        "{metrics}"
    );
    eprintln!(
        "{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("palisade_policy_apply_to_enforced_seconds_"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let get = http_request(&fe_ns, app_ip, 80, "GET", "/public", &[], t).expect("answer");
    assert_eq!((get.status, get.body.as_str()), (200, "GET /public\n"));
    let post = http_request(&fe_ns, app_ip, 80, "POST", "/public", &[], t).expect("answer");
    assert_eq!((post.status, post.body.as_str()), (403, "Access denied"));
    let other = http_request(&fe_ns, app_ip, 80, "GET", "/private", &[], t).expect("answer");
    assert_eq!(other.status, 403);
    assert!(http_request(&other_ns, app_ip, 80, "GET", "/public", &[], t).is_err());
    // A pod run after the policy (added in place, not by a rebuild): the
    // proxy knows its identity by the time `pod run` returns.
    let (fe2_ns, _) = pod(&agent, "default", "frontend-2", &[("app", "frontend")]);
    let get2 = http_request(&fe2_ns, app_ip, 80, "GET", "/public", &[], t).expect("answer");
    assert_eq!(get2.status, 200);
    let post2 = http_request(&fe2_ns, app_ip, 80, "POST", "/public", &[], t).expect("answer");
    assert_eq!(post2.status, 403);

    let l7 = |verdict: Verdict, method: &str, code: u32| {
        agent.flows().page(None, None).flows.iter().any(|r| {
            r.flow.as_ref().is_some_and(|f| {
                f.flow_type == FlowType::L7
                    && f.verdict == verdict
                    && f.l7
                        .as_ref()
                        .and_then(|l| l.http.as_ref())
                        .is_some_and(|h| {
                            h.method == method && h.code == code && h.url.ends_with("/public")
                        })
                    && f.source.as_ref().is_some_and(|s| s.pod_name == "frontend")
                    // completed like the datapath's flows: endpoint ids,
                    // the same label set, no TCP flags
                    && f.destination.as_ref().is_some_and(|d| {
                        d.id != 0
                            && d.labels.contains(&"k8s:app=myapp".to_string())
                            && !d.labels.iter().any(|l| l.contains("namespace.labels"))
                    })
                    && f.l4.as_ref().and_then(|l| l.tcp.as_ref()).is_some_and(|t| t.flags.is_none())
                    && f.extensions
                        .iter()
                        .any(|e| e.rules.iter().any(|r| r.contains("example-policy")))
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(3), || l7(
            Verdict::Forwarded,
            "GET",
            200
        ) && l7(
            Verdict::Dropped,
            "POST",
            403
        )),
        "{:#?}",
        agent.flows().page(None, None)
    );

    // The L7 policy goes: the proxy is fed once more and drops its
    // redirection (no HTTP target is left, so later pod churn costs it no
    // rebuild), and nothing filters the requests any more.
    agent
        .delete_text("example-policy.yaml", EXAMPLE_POLICY)
        .expect("delete");
    let other = http_request(&fe_ns, app_ip, 80, "GET", "/private", &[], t).expect("answer");
    assert_eq!((other.status, other.body.as_str()), (200, "GET /private\n"));
    let post = http_request(&other_ns, app_ip, 80, "POST", "/public", &[], t).expect("answer");
    assert_eq!(post.status, 200);
    agent.destroy();
}
