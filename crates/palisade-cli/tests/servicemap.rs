//! The service map page, rendered by a real headless Chromium (Debian's
//! `chromium`, installed by `make deps`): the page's script must draw the
//! workloads and the flow table; a screenshot is kept in the test output.

use std::path::PathBuf;
use std::process::Command;

/// Four workloads: `frontend → backend` on two ports (one dropped, one
/// forwarded) and `backend → frontend` (dropped) the other way, plus a reply
/// (no connection of its own); `database → backend` forwarded and dropped on
/// 80 and only audited on 3306, and `backend → database` back; every pair
/// connected, so that on a ring two edges cross (and would share their
/// middle, labels included); `backend → cache` also had one request the L7
/// proxy could not complete (ERROR, a lane of its own).
const FLOWS: &str = r#"{"flow":{"time":"2026-11-27T11:00:00.000000001Z","verdict":"DROPPED","drop_reason":133,"drop_reason_desc":"POLICY_DENIED","IP":{"source":"10.0.1.10","destination":"10.0.2.20","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40000,"destination_port":80}},"source":{"namespace":"default","labels":["k8s:app=frontend"],"pod_name":"frontend"},"destination":{"namespace":"default","labels":["k8s:app=backend"],"pod_name":"backend"},"Type":"L3_L4","traffic_direction":"INGRESS","extensions":[{"@type":"type.googleapis.com/palisade.flow.v1.PolicyExplanation","rules":["CiliumNetworkPolicy default/backend-policy (default deny)"]}]}}
{"flow":{"time":"2026-11-27T11:00:01.000000001Z","verdict":"FORWARDED","IP":{"source":"10.0.1.10","destination":"10.0.3.30","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40001,"destination_port":3306}},"source":{"namespace":"default","labels":["k8s:app=frontend"],"pod_name":"frontend"},"destination":{"namespace":"default","labels":["k8s:app=database"],"pod_name":"database"},"Type":"L3_L4","traffic_direction":"INGRESS"}}
{"flow":{"time":"2026-11-27T11:00:02.000000001Z","verdict":"FORWARDED","IP":{"source":"10.0.1.10","destination":"10.0.2.20","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40002,"destination_port":8080}},"source":{"namespace":"default","labels":["k8s:app=frontend"],"pod_name":"frontend"},"destination":{"namespace":"default","labels":["k8s:app=backend"],"pod_name":"backend"},"Type":"L3_L4","traffic_direction":"INGRESS"}}
{"flow":{"time":"2026-11-27T11:00:03.000000001Z","verdict":"FORWARDED","IP":{"source":"10.0.2.20","destination":"10.0.1.10","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":8080,"destination_port":40002}},"source":{"namespace":"default","labels":["k8s:app=backend"],"pod_name":"backend"},"destination":{"namespace":"default","labels":["k8s:app=frontend"],"pod_name":"frontend"},"Type":"L3_L4","traffic_direction":"INGRESS","is_reply":true}}
{"flow":{"time":"2026-11-27T11:00:04.000000001Z","verdict":"DROPPED","drop_reason":133,"drop_reason_desc":"POLICY_DENIED","IP":{"source":"10.0.2.20","destination":"10.0.1.10","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40003,"destination_port":9090}},"source":{"namespace":"default","labels":["k8s:app=backend"],"pod_name":"backend"},"destination":{"namespace":"default","labels":["k8s:app=frontend"],"pod_name":"frontend"},"Type":"L3_L4","traffic_direction":"INGRESS"}}
{"flow":{"time":"2026-11-27T11:00:05.000000001Z","verdict":"FORWARDED","IP":{"source":"10.0.3.30","destination":"10.0.2.20","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40004,"destination_port":80}},"source":{"namespace":"default","labels":["k8s:app=database"],"pod_name":"database"},"destination":{"namespace":"default","labels":["k8s:app=backend"],"pod_name":"backend"},"Type":"L3_L4","traffic_direction":"INGRESS"}}
{"flow":{"time":"2026-11-27T11:00:06.000000001Z","verdict":"DROPPED","drop_reason":133,"drop_reason_desc":"POLICY_DENIED","IP":{"source":"10.0.3.30","destination":"10.0.2.20","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40005,"destination_port":80}},"source":{"namespace":"default","labels":["k8s:app=database"],"pod_name":"database"},"destination":{"namespace":"default","labels":["k8s:app=backend"],"pod_name":"backend"},"Type":"L3_L4","traffic_direction":"INGRESS"}}
{"flow":{"time":"2026-11-27T11:00:07.000000001Z","verdict":"AUDIT","IP":{"source":"10.0.3.30","destination":"10.0.2.20","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40006,"destination_port":3306}},"source":{"namespace":"default","labels":["k8s:app=database"],"pod_name":"database"},"destination":{"namespace":"default","labels":["k8s:app=backend"],"pod_name":"backend"},"Type":"L3_L4","traffic_direction":"INGRESS","extensions":[{"@type":"type.googleapis.com/palisade.flow.v1.PolicyExplanation","rules":["CiliumNetworkPolicy default/default-deny (default deny)"]}]}}
{"flow":{"time":"2026-11-27T11:00:08.000000001Z","verdict":"FORWARDED","IP":{"source":"10.0.2.20","destination":"10.0.3.30","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40007,"destination_port":3306}},"source":{"namespace":"default","labels":["k8s:app=backend"],"pod_name":"backend"},"destination":{"namespace":"default","labels":["k8s:app=database"],"pod_name":"database"},"Type":"L3_L4","traffic_direction":"INGRESS"}}
{"flow":{"time":"2026-11-27T11:00:09.000000001Z","verdict":"FORWARDED","IP":{"source":"10.0.1.10","destination":"10.0.4.40","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40008,"destination_port":6379}},"source":{"namespace":"default","labels":["k8s:app=frontend"],"pod_name":"frontend"},"destination":{"namespace":"default","labels":["k8s:app=cache"],"pod_name":"cache"},"Type":"L3_L4","traffic_direction":"INGRESS"}}
{"flow":{"time":"2026-11-27T11:00:10.000000001Z","verdict":"FORWARDED","IP":{"source":"10.0.2.20","destination":"10.0.4.40","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40009,"destination_port":6379}},"source":{"namespace":"default","labels":["k8s:app=backend"],"pod_name":"backend"},"destination":{"namespace":"default","labels":["k8s:app=cache"],"pod_name":"cache"},"Type":"L3_L4","traffic_direction":"INGRESS"}}
{"flow":{"time":"2026-11-27T11:00:11.000000001Z","verdict":"DROPPED","drop_reason":133,"drop_reason_desc":"POLICY_DENIED","IP":{"source":"10.0.4.40","destination":"10.0.3.30","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40010,"destination_port":3306}},"source":{"namespace":"default","labels":["k8s:app=cache"],"pod_name":"cache"},"destination":{"namespace":"default","labels":["k8s:app=database"],"pod_name":"database"},"Type":"L3_L4","traffic_direction":"INGRESS"}}
{"flow":{"time":"2026-11-27T11:00:11.500000001Z","verdict":"ERROR","IP":{"source":"10.0.2.20","destination":"10.0.4.40","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40011,"destination_port":6379}},"source":{"namespace":"default","labels":["k8s:app=backend"],"pod_name":"backend"},"destination":{"namespace":"default","labels":["k8s:app=cache"],"pod_name":"cache"},"Type":"L7","traffic_direction":"EGRESS","l7":{"type":"RESPONSE","latency_ns":"1000000","http":{"code":503,"method":"GET","url":"http://cache/"}}}}
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

/// An edge as the page drew it: `<g class="edge …">` with its lanes.
#[derive(Debug)]
struct Edge {
    verdicts: Vec<String>,
    source: String,
    destination: String,
    ports: String,
    title: String,
    /// The whole curve (the click target).
    path: String,
    /// One `(verdict, d, stroke)` per lane.
    lanes: Vec<(String, String, String)>,
}

/// An edge's label: its background box and one line per port.
#[derive(Debug)]
struct Label {
    verdicts: Vec<String>,
    source: String,
    destination: String,
    rect: [f64; 4],
    /// `(port, forwarded, dropped, audit, text shown)`.
    ports: Vec<(String, u64, u64, u64, String)>,
}

fn re(r: &str) -> regex::Regex {
    regex::Regex::new(r).expect("regex")
}

fn num_attr(attrs: &str, name: &str) -> f64 {
    re(&format!(r#"\b{name}="(-?[0-9.]+)""#))
        .captures(attrs)
        .and_then(|c| c[1].parse().ok())
        .unwrap_or_else(|| panic!("no numeric {name} in {attrs}"))
}

/// `[x0, y0, x1, y1]` of an element's `x`, `y`, `width`, `height`.
fn rect(attrs: &str) -> [f64; 4] {
    let (x, y) = (num_attr(attrs, "x"), num_attr(attrs, "y"));
    [
        x,
        y,
        x + num_attr(attrs, "width"),
        y + num_attr(attrs, "height"),
    ]
}

fn overlap(a: &[f64; 4], b: &[f64; 4]) -> bool {
    a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]
}

/// The point halfway along a path `M x y C x1 y1 x2 y2 x3 y3`.
fn midpoint(d: &str) -> (f64, f64) {
    let n: Vec<f64> = re(r"-?[0-9.]+")
        .find_iter(d)
        .map(|m| m.as_str().parse().expect("number"))
        .collect();
    assert_eq!(n.len(), 8, "not one cubic curve: {d}");
    (
        (n[0] + 3.0 * n[2] + 3.0 * n[4] + n[6]) / 8.0,
        (n[1] + 3.0 * n[3] + 3.0 * n[5] + n[7]) / 8.0,
    )
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn edges(dom: &str) -> Vec<Edge> {
    let lane = re(r#"<path class="lane ([a-z]+)" d="([^"]+)" stroke="([^"]+)""#);
    re(r#"(?s)<g class="edge ([a-z ]+)" data-source="([^"]*)" data-destination="([^"]*)" data-ports="([^"]*)"[^>]*><title>([^<]*)</title><path class="hit" d="([^"]+)"(.*?)</g>"#)
        .captures_iter(dom)
        .map(|c| Edge {
            verdicts: words(&c[1]),
            source: c[2].into(),
            destination: c[3].into(),
            ports: c[4].into(),
            title: c[5].into(),
            path: c[6].into(),
            lanes: lane
                .captures_iter(&c[7])
                .map(|l| (l[1].into(), l[2].into(), l[3].into()))
                .collect(),
        })
        .collect()
}

fn labels(dom: &str) -> Vec<Label> {
    let port = re(
        r#"(?s)<tspan class="port ([a-z ]+)" data-port="([^"]*)" data-forwarded="(\d+)" data-dropped="(\d+)" data-audit="(\d+)" data-error="(\d+)"[^>]*>(.*?)</tspan></tspan>"#,
    );
    let tag = re(r"<[^>]*>");
    re(r#"(?s)<g class="edge-label ([a-z ]+)" data-source="([^"]*)" data-destination="([^"]*)"><title>[^<]*</title><rect class="label-bg"([^>]*)>(?:</rect>)?<text[^>]*>(.*?)</text></g>"#)
        .captures_iter(dom)
        .map(|c| Label {
            verdicts: words(&c[1]),
            source: c[2].into(),
            destination: c[3].into(),
            rect: rect(&c[4]),
            ports: port
                .captures_iter(&c[5])
                .map(|p| {
                    let n = |i: usize| p[i].parse::<u64>().expect("count");
                    let shown = tag.replace_all(&p[7], "").to_string();
                    assert_eq!(words(&p[1]).len(), [n(3), n(4), n(5), n(6)].iter().filter(|&&k| k > 0).count(), "{shown}");
                    (p[2].to_string(), n(3), n(4), n(5), shown)
                })
                .collect(),
        })
        .collect()
}

fn colour(verdict: &str) -> &'static str {
    match verdict {
        "forwarded" => "#2e7d32",
        "dropped" => "#c62828",
        "audit" => "#ef6c00",
        "error" => "#6a1b9a",
        v => panic!("unknown verdict class {v}"),
    }
}

fn dump_dom(url: &str, profile: &std::path::Path) -> String {
    let out = chromium(&["--dump-dom", url], profile);
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    let dom = dump_dom(&url, &dir.join("profile-dom"));
    assert!(
        dom.contains("4 workloads, 10 connections on 8 edges, 13 of 13 flows shown"),
        "the script did not run: {dom}"
    );
    assert!(dom.contains(">frontend<") && dom.contains(">backend<") && dom.contains(">database<"));
    assert!(dom.contains("class=\"edge dropped\"") && dom.contains("class=\"edge forwarded\""));
    assert!(dom.contains("CiliumNetworkPolicy default/backend-policy (default deny)"));

    // One edge per (source, destination), named by its ports, with one
    // lane per verdict seen on it; the reply is no edge.
    let edges = edges(&dom);
    let got: Vec<(&str, &str, &str, Vec<&str>)> = edges
        .iter()
        .map(|e| {
            (
                e.source.trim_start_matches("default/"),
                e.destination.trim_start_matches("default/"),
                e.ports.as_str(),
                e.verdicts.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let want: Vec<(&str, &str, &str, Vec<&str>)> = vec![
        ("backend", "cache", "6379/TCP", vec!["forwarded", "error"]),
        ("backend", "database", "3306/TCP", vec!["forwarded"]),
        ("backend", "frontend", "9090/TCP", vec!["dropped"]),
        ("cache", "database", "3306/TCP", vec!["dropped"]),
        (
            "database",
            "backend",
            "80/TCP 3306/TCP",
            vec!["forwarded", "dropped", "audit"],
        ),
        (
            "frontend",
            "backend",
            "80/TCP 8080/TCP",
            vec!["forwarded", "dropped"],
        ),
        ("frontend", "cache", "6379/TCP", vec!["forwarded"]),
        ("frontend", "database", "3306/TCP", vec!["forwarded"]),
    ];
    assert_eq!(got, want, "{edges:#?}");
    for e in &edges {
        let lanes: Vec<&str> = e.lanes.iter().map(|l| l.0.as_str()).collect();
        assert_eq!(lanes, e.verdicts, "one lane per verdict: {e:#?}");
        for (v, _, stroke) in &e.lanes {
            assert_eq!(stroke, colour(v), "{e:#?}");
        }
    }
    let (db_be, fe_be) = (&edges[4], &edges[5]);
    assert!(
        fe_be
            .title
            .starts_with("default/frontend → default/backend\n80/TCP: 1 dropped\n")
            && fe_be
                .title
                .contains("CiliumNetworkPolicy default/backend-policy (default deny)")
            && fe_be.title.contains("8080/TCP: 1 forwarded"),
        "per-port detail in the tooltip: {}",
        fe_be.title
    );
    assert!(
        db_be
            .title
            .contains("3306/TCP: 1 audit\n  CiliumNetworkPolicy default/default-deny"),
        "{}",
        db_be.title
    );

    // Nothing is drawn on top of anything else: no two edges share a path
    // or a lane, and opposite directions are separate arcs (their middles
    // well apart).
    let mut paths: Vec<&str> = edges.iter().map(|e| e.path.as_str()).collect();
    paths.extend(
        edges
            .iter()
            .flat_map(|e| e.lanes.iter().map(|l| l.1.as_str())),
    );
    for (i, a) in paths.iter().enumerate() {
        for b in &paths[i + 1..] {
            assert_ne!(a, b, "two edges drawn on the same path");
        }
    }
    for (i, a) in edges.iter().enumerate() {
        for b in &edges[i + 1..] {
            let ((ax, ay), (bx, by)) = (midpoint(&a.path), midpoint(&b.path));
            let apart = (ax - bx).hypot(ay - by);
            assert!(
                apart > 20.0,
                "{} → {} and {} → {} cross at their middles ({apart:.1} px apart)",
                a.source,
                a.destination,
                b.source,
                b.destination
            );
        }
    }

    // One label per edge, one line per port with its counts, none over
    // another label or a workload, all inside the map.
    let labels = labels(&dom);
    assert_eq!(labels.len(), edges.len(), "{labels:#?}");
    for e in &edges {
        let l = labels
            .iter()
            .find(|l| l.source == e.source && l.destination == e.destination)
            .unwrap_or_else(|| panic!("no label for {e:#?}: {labels:#?}"));
        assert_eq!(l.verdicts, e.verdicts);
        let ports: Vec<&str> = l.ports.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(ports.join(" "), e.ports, "{l:#?}");
    }
    let db_be = labels
        .iter()
        .find(|l| l.source == "default/database")
        .expect("database → backend label");
    let shown: Vec<(&str, u64, u64, u64, &str)> = db_be
        .ports
        .iter()
        .map(|p| (p.0.as_str(), p.1, p.2, p.3, p.4.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("80/TCP", 1, 1, 0, "80/TCP 1✓ 1✗"),
            ("3306/TCP", 0, 0, 1, "3306/TCP 1 audit"),
        ]
    );
    let nodes: Vec<[f64; 4]> = re(r#"<g class="node [a-z-]+"><rect ([^>]*)>"#)
        .captures_iter(&dom)
        .map(|c| rect(&c[1]))
        .collect();
    assert_eq!(nodes.len(), 4);
    let view = re(r#"<svg id="map"[^>]*viewBox="0 0 ([0-9.]+) ([0-9.]+)""#)
        .captures(&dom)
        .map(|c| [0.0, 0.0, c[1].parse().expect("w"), c[2].parse().expect("h")])
        .expect("the map's viewBox");
    for (i, a) in labels.iter().enumerate() {
        let r = &a.rect;
        assert!(
            r[0] >= view[0] && r[1] >= view[1] && r[2] <= view[2] && r[3] <= view[3],
            "label outside the map: {a:#?}"
        );
        for b in &labels[i + 1..] {
            assert!(!overlap(r, &b.rect), "labels overprint: {a:#?} {b:#?}");
        }
        for n in &nodes {
            assert!(!overlap(r, n), "label over a workload {n:?}: {a:#?}");
        }
    }

    // A click on an edge (its address: #from=…&to=…) shows its ports and
    // only its flows; replies stay out, as they do from the edge's counts.
    let picked = dump_dom(
        &format!("{url}#from=default%2Fdatabase&to=default%2Fbackend"),
        &dir.join("profile-pick"),
    );
    assert!(
        picked.contains(
            "4 workloads, 10 connections on 8 edges, 3 of 13 flows shown (edge default/database → default/backend)"
        ),
        "{picked}"
    );
    assert!(picked.contains(r#"<g class="edge forwarded dropped audit selected""#));
    let port_rows: Vec<String> = re(r#"<tr class="edge-port" data-port="[^"]*">(.*?)</tr>"#)
        .captures_iter(&picked)
        .map(|c| {
            re(r"<[^>]*>")
                .replace_all(&c[1].replace("</td><td", "</td>|<td"), "")
                .to_string()
        })
        .collect();
    assert_eq!(
        port_rows,
        [
            "80/TCP|1|1|0|0|",
            "3306/TCP|0|0|1|0|CiliumNetworkPolicy default/default-deny (default deny)"
        ]
    );
    let body = picked
        .split("<table id=\"flows\">")
        .nth(1)
        .expect("flow table");
    let rows = re(
        r"<tr><td>[^<]*</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td[^>]*>([A-Z]+)</td>",
    );
    let shown: Vec<String> = rows
        .captures_iter(body)
        .map(|c| format!("{} {} {} {}", &c[1], &c[2], &c[3], &c[4]))
        .collect();
    assert_eq!(
        shown,
        [
            "default/database default/backend 80/TCP FORWARDED",
            "default/database default/backend 80/TCP DROPPED",
            "default/database default/backend 3306/TCP AUDIT",
        ]
    );
    let back = dump_dom(
        &format!("{url}#from=default%2Fbackend&to=default%2Ffrontend"),
        &dir.join("profile-pick-back"),
    );
    assert!(
        back.contains("1 of 13 flows shown (edge default/backend → default/frontend)"),
        "the reply counted with the edge: {back}"
    );

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
