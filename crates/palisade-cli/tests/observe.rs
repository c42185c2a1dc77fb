//! `palisade observe`, `palisade policy impact` and audit mode, end to end
//! through the binary.

use std::path::PathBuf;
use std::process::{Command, Output};

fn shared() -> PathBuf {
    if let Ok(p) = std::env::var("PALISADE_SHARED") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn palisade(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .output()
        .expect("run palisade")
}

fn tmp(name: &str, text: &str) -> String {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("observe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

const FLOWS: &str = r#"{"flow":{"time":"2026-11-27T11:00:00.000000001Z","verdict":"DROPPED","drop_reason":133,"drop_reason_desc":"POLICY_DENIED","IP":{"source":"10.0.1.10","destination":"10.0.2.20","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40000,"destination_port":80}},"source":{"namespace":"default","labels":["k8s:app=frontend"],"pod_name":"frontend"},"destination":{"namespace":"default","labels":["k8s:app=backend"],"pod_name":"backend"},"Type":"L3_L4","traffic_direction":"INGRESS"},"node_name":"node-1"}
{"flow":{"time":"2026-11-27T11:00:01.000000001Z","verdict":"FORWARDED","IP":{"source":"10.0.1.10","destination":"10.0.3.30","ipVersion":"IPv4"},"l4":{"UDP":{"source_port":40001,"destination_port":53}},"source":{"namespace":"default","pod_name":"frontend"},"destination":{"namespace":"kube-system","pod_name":"coredns"},"Type":"L3_L4","traffic_direction":"EGRESS"},"node_name":"node-1"}
"#;

#[test]
fn observe_filters_with_hubble_semantics() {
    let f = tmp("flows.json", FLOWS);
    let out = palisade(&[
        "observe",
        "--input-file",
        &f,
        "--verdict",
        "DROPPED",
        "-o",
        "json",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("json flow");
    assert_eq!(v["destination"]["pod_name"], "backend");
    // --not negates only the next filter.
    let out = palisade(&[
        "observe",
        "--input-file",
        &f,
        "--not",
        "--namespace",
        "kube-system",
        "-o",
        "jsonpb",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1);
    assert!(text.contains("\"flow\""));
    // Two values of one flag are ORed; two flags are ANDed.
    let out = palisade(&[
        "observe",
        "--input-file",
        &f,
        "--port",
        "80",
        "--port",
        "53",
        "--from-pod",
        "default/front",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    let out = palisade(&[
        "observe",
        "--input-file",
        &f,
        "--port",
        "80",
        "--protocol",
        "udp",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 0);
    let out = palisade(&["observe", "--input-file", &f, "--last", "1", "-o", "table"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("TIMESTAMP"));
    assert!(text.contains("FORWARDED") && !text.contains("DROPPED"));
    let out = palisade(&["observe", "--input-file", &f, "--verdict", "NOPE"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FORWARDED"));
}

fn l7_manifests() -> String {
    shared()
        .join("acceptance/semantics/l7-http/manifests.yaml")
        .display()
        .to_string()
}

const L7_FLOWS: &str = r#"{"flow":{"time":"2026-11-27T11:00:00Z","verdict":"FORWARDED","l4":{"TCP":{"source_port":40000,"destination_port":80}},"IP":{"source":"1.1.1.1","destination":"1.1.1.2","ipVersion":"IPv4"},"source":{"namespace":"default","pod_name":"frontend"},"destination":{"namespace":"default","pod_name":"myapp"},"Type":"L7","l7":{"type":"REQUEST","http":{"method":"GET","url":"http://myapp/public"}}}}
{"flow":{"time":"2026-11-27T11:00:01Z","verdict":"FORWARDED","l4":{"TCP":{"source_port":40001,"destination_port":80}},"IP":{"source":"1.1.1.1","destination":"1.1.1.2","ipVersion":"IPv4"},"source":{"namespace":"default","pod_name":"frontend"},"destination":{"namespace":"default","pod_name":"myapp"},"Type":"L7","l7":{"type":"REQUEST","http":{"method":"POST","url":"http://myapp/public"}}}}
{"flow":{"time":"2026-11-27T11:00:02Z","verdict":"DROPPED","drop_reason":133,"l4":{"TCP":{"source_port":40002,"destination_port":3306}},"IP":{"source":"1.1.1.2","destination":"1.1.1.3","ipVersion":"IPv4"},"source":{"namespace":"default","pod_name":"myapp"},"destination":{"namespace":"default","pod_name":"database"},"Type":"L3_L4"}}
"#;

#[test]
fn impact_lists_newly_dropped_and_newly_allowed_with_rules() {
    let flows = tmp("l7flows.json", L7_FLOWS);
    let out = palisade(&[
        "policy",
        "impact",
        "-f",
        &l7_manifests(),
        "--flows",
        &flows,
        "-o",
        "json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["replayed"], 3);
    assert_eq!(v["newly_dropped"], 1);
    assert_eq!(v["newly_allowed"], 1);
    let changes = v["changes"].as_array().expect("changes");
    let dropped = changes
        .iter()
        .find(|c| c["change"] == "newly dropped")
        .expect("a drop");
    assert_eq!(dropped["request"], "POST /public");
    assert!(
        dropped["why"]
            .as_str()
            .unwrap_or("")
            .contains("example-policy")
    );
    let allowed = changes
        .iter()
        .find(|c| c["change"] == "newly allowed")
        .expect("an allow");
    assert_eq!(allowed["to"], "default/database");
}

#[test]
fn audit_annotation_reports_instead_of_enforcing() {
    let text = std::fs::read_to_string(l7_manifests()).expect("manifests");
    let audited = text.replacen(
        "  name: example-policy\n",
        "  name: example-policy\n  annotations:\n    palisade.io/audit: \"true\"\n",
        1,
    );
    assert_ne!(audited, text, "the manifest changed shape; update the test");
    let m = tmp("audited.yaml", &audited);
    let args = [
        "policy",
        "trace",
        "-f",
        &m,
        "--from",
        "default/other",
        "--to",
        "default/myapp",
        "--port",
        "80/TCP",
    ];
    let out = palisade(&args);
    assert_eq!(out.status.code(), Some(0), "audited denial is delivered");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .contains("Audit: only audited policies (CiliumNetworkPolicy default/example-policy)"),
        "{stdout}"
    );
    // Without the annotation the same connection is denied.
    let plain = l7_manifests();
    let args = [
        "policy",
        "trace",
        "-f",
        &plain,
        "--from",
        "default/other",
        "--to",
        "default/myapp",
        "--port",
        "80/TCP",
    ];
    assert_eq!(palisade(&args).status.code(), Some(1));
}
