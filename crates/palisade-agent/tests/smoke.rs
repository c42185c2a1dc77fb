//! The agent end to end on one node: pods, policy apply, real traffic.

mod common;

use common::*;
use palisade_agent::Agent;
use palisade_agent::traffic::{Outcome, Servers, tcp_probe, udp_probe};

const DENY_ALL_BUT_FRONTEND: &str = r#"
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
"#;

#[test]
fn pods_policy_and_traffic() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let names = Names::new("smoke");
    let _cleanup = Cleanup(names.clone());
    let agent = Agent::start(names.config("node-a", "10.230.0.0/24")).expect("agent starts");
    let (fe_ns, _) = pod(&agent, "default", "frontend", &[("role", "frontend")]);
    let (other_ns, _) = pod(&agent, "default", "other", &[("role", "other")]);
    let (be_ns, be_ip) = pod(&agent, "default", "backend", &[("role", "backend")]);
    let _srv = Servers::start(&be_ns, &[80, 81], &[53]).expect("servers");

    assert_eq!(tcp_probe(&fe_ns, be_ip, 80, T), Outcome::Allowed);
    assert_eq!(tcp_probe(&other_ns, be_ip, 80, T), Outcome::Allowed);
    assert_eq!(udp_probe(&other_ns, be_ip, 53, T), Outcome::Allowed);

    agent
        .apply_text("backend.yaml", DENY_ALL_BUT_FRONTEND)
        .expect("valid policy");
    assert_eq!(tcp_probe(&fe_ns, be_ip, 80, T), Outcome::Allowed);
    assert_eq!(tcp_probe(&fe_ns, be_ip, 81, T), Outcome::Dropped);
    assert_eq!(tcp_probe(&other_ns, be_ip, 80, T), Outcome::Dropped);
    assert_eq!(udp_probe(&other_ns, be_ip, 53, T), Outcome::Dropped);

    let eps = agent.endpoints();
    assert_eq!(eps.len(), 3);
    assert!(eps.iter().all(|e| e.status == "ready"), "{eps:?}");
    let bpf = agent.bpf_policy("default/backend").expect("bpf policy");
    assert!(bpf.in_sync, "{bpf:?}");

    // drops are attributed to default deny with the selecting policy
    assert!(
        palisade_agent::traffic::wait_until(std::time::Duration::from_secs(3), || agent
            .events(0)
            .iter()
            .any(|e| e.verdict == "dropped"
                && e.rule.contains(
                    "default deny, selected by CiliumNetworkPolicy default/backend-ingress"
                ))),
        "{:?}",
        agent.events(0)
    );

    agent
        .delete_text("backend.yaml", DENY_ALL_BUT_FRONTEND)
        .expect("delete");
    assert_eq!(tcp_probe(&other_ns, be_ip, 80, T), Outcome::Allowed);
    agent.delete_pod("default/other").expect("pod delete");
    assert_eq!(agent.pods().len(), 2);
    agent.destroy();
}
