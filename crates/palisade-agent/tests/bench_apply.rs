//! Apply-to-enforced latency (run by bench/apply-latency.sh; ignored in CI):
//! an in-process agent with two pods; each iteration applies or deletes a
//! policy through the API path and measures until the kernel map holds the
//! new policy (read back from the live map), then confirms it on the wire
//! every 20th iteration. Also the manifests-directory path (file written ->
//! kernel map updated), which includes the watcher's poll interval.

mod common;

use std::time::{Duration, Instant};

use common::*;
use palisade_agent::Agent;
use palisade_agent::traffic::{Outcome, Servers, tcp_probe, wait_until};

fn policy(port: u16) -> String {
    format!(
        r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: bench
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      app: server
  ingress:
    - fromEndpoints:
        - matchLabels:
            app: client
      toPorts:
        - ports:
            - port: "{port}"
              protocol: TCP
"#
    )
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
#[ignore = "benchmark: run bench/apply-latency.sh"]
fn apply_latency() {
    if !is_root() {
        return;
    }
    let names = Names::new("bench");
    let _c = Cleanup(names.clone());
    let mut cfg = names.config("node-b", "10.243.0.0/24");
    let mdir = names.state_dir.with_extension("manifests");
    std::fs::create_dir_all(&mdir).expect("dir");
    cfg.manifests_dir = Some(mdir.clone());
    cfg.watch_interval = Duration::from_millis(200);
    let agent = Agent::start(cfg).expect("agent");
    let (cns, _) = pod(&agent, "default", "client", &[("app", "client")]);
    let (sns, sip) = pod(&agent, "default", "server", &[("app", "server")]);
    let _s = Servers::start(&sns, &[80, 81], &[]).expect("servers");
    let has_port = |port: u16| {
        agent
            .bpf_policy("default/server")
            .map(|p| p.entries.iter().any(|e| e.port == format!("{port}/TCP")))
            .unwrap_or(false)
    };
    let mut api = Vec::new();
    for i in 0..200u16 {
        let port = if i % 2 == 0 { 80 } else { 81 };
        let t0 = Instant::now();
        agent
            .apply_text("bench.yaml", &policy(port))
            .expect("apply");
        assert!(wait_until(Duration::from_secs(2), || has_port(port)));
        api.push(t0.elapsed().as_secs_f64() * 1e3);
        if i % 20 == 0 {
            assert_eq!(
                tcp_probe(&cns, sip, port, Duration::from_millis(300)),
                Outcome::Allowed
            );
        }
    }
    agent
        .delete_text("bench.yaml", &policy(80))
        .expect("delete");
    let mut dir = Vec::new();
    for i in 0..20u16 {
        let port = if i % 2 == 0 { 80 } else { 81 };
        let t0 = Instant::now();
        std::fs::write(mdir.join("bench.yaml"), policy(port)).expect("write");
        assert!(wait_until(Duration::from_secs(5), || has_port(port)
            && !has_port(if port == 80 { 81 } else { 80 })));
        dir.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    println!("| path | samples | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    let mx = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let m = mx(&api);
    println!(
        "| API apply -> kernel map | {} | {:.2} | {:.2} | {:.2} |",
        api.len(),
        pct(&mut api, 0.5),
        pct(&mut api, 0.99),
        m
    );
    let m = mx(&dir);
    println!(
        "| manifests dir write -> kernel map (200 ms poll) | {} | {:.1} | {:.1} | {:.1} |",
        dir.len(),
        pct(&mut dir, 0.5),
        pct(&mut dir, 0.99),
        m
    );
    let _ = std::fs::remove_dir_all(&mdir);
    agent.destroy();
}
