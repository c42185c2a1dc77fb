//! The service map page, rendered by a real headless Chromium (Debian's
//! `chromium`, installed by `make deps`): the page's script must draw the
//! workloads and the flow table; a screenshot is kept in the test output.

use std::path::PathBuf;
use std::process::Command;

const FLOWS: &str = r#"{"flow":{"time":"2026-11-27T11:00:00.000000001Z","verdict":"DROPPED","drop_reason":133,"drop_reason_desc":"POLICY_DENIED","IP":{"source":"10.0.1.10","destination":"10.0.2.20","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40000,"destination_port":80}},"source":{"namespace":"default","labels":["k8s:app=frontend"],"pod_name":"frontend"},"destination":{"namespace":"default","labels":["k8s:app=backend"],"pod_name":"backend"},"Type":"L3_L4","traffic_direction":"INGRESS","extensions":[{"@type":"type.googleapis.com/palisade.flow.v1.PolicyExplanation","rules":["CiliumNetworkPolicy default/backend-policy (default deny)"]}]}}
{"flow":{"time":"2026-11-27T11:00:01.000000001Z","verdict":"FORWARDED","IP":{"source":"10.0.1.10","destination":"10.0.3.30","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40001,"destination_port":3306}},"source":{"namespace":"default","labels":["k8s:app=frontend"],"pod_name":"frontend"},"destination":{"namespace":"default","labels":["k8s:app=database"],"pod_name":"database"},"Type":"L3_L4","traffic_direction":"EGRESS"}}
"#;

fn out_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("servicemap-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("test output dir");
    d
}

fn chromium(args: &[&str], profile: &std::path::Path) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium must be installed (make deps installs Debian's chromium)")
}

#[test]
fn service_map_renders_workloads_edges_and_flows_in_chromium() {
    let dir = out_dir();
    let flows = dir.join("flows.json");
    std::fs::write(&flows, FLOWS).expect("write flows");
    let page = dir.join("map.html");
    let st = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["servicemap", "--input-file"])
        .arg(&flows)
        .arg("--output")
        .arg(&page)
        .status()
        .expect("run palisade");
    assert!(st.success());
    let url = format!("file://{}", page.display());
    let dom = chromium(&["--dump-dom", &url], &dir.join("profile-dom"));
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("3 workloads, 2 connections, 2 of 2 flows shown"),
        "the script did not run: {dom}"
    );
    assert!(dom.contains(">frontend<") && dom.contains(">backend<") && dom.contains(">database<"));
    assert!(dom.contains("class=\"edge dropped\"") && dom.contains("class=\"edge forwarded\""));
    assert!(dom.contains("CiliumNetworkPolicy default/backend-policy (default deny)"));
    let shot = dir.join("servicemap.png");
    let out = chromium(
        &[
            "--window-size=1200,800",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
        &dir.join("profile-shot"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot is not a real PNG"
    );
    eprintln!("screenshot: {}", shot.display());
}
