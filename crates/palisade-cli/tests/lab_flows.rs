//! The lab's own flows, end to end (issue 7): `palisade lab` runs once
//! (real pods, real traffic, its L3/L4, L7 HTTP, DNS and audit sections)
//! and writes every flow its agent recorded (`--flows-out`) and its cluster
//! and policies (`--manifests-out`). Then, on those files:
//!
//! - a Hubble-format reader (Google's protobuf runtime, Debian's
//!   `python3-protobuf`, with `proto/*.proto` compiled by Debian's `protoc`)
//!   decodes every line as a `GetFlowsResponse`, unknown fields refused, and
//!   re-encodes it to the same JSON;
//! - `palisade servicemap`, rendered by headless Chromium, shows every lab
//!   pod and edges with forwarded and dropped verdicts;
//! - `palisade policy impact` replays them against one of the lab's
//!   policies, and against its audited default-deny.
//!
//! Needs root (skipped otherwise). The lab removes everything it created;
//! if it has to be killed, the test removes what it left by name.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
/// Debian's interpreter, where `python3-protobuf` is installed.
const PYTHON: &str = "/usr/bin/python3";
const LAB_DEADLINE: Duration = Duration::from_secs(240);

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What one lab run left behind.
struct LabRun {
    dir: PathBuf,
    flows: PathBuf,
    manifests: PathBuf,
    /// Non-empty lines of the flows file.
    lines: usize,
    /// Lines that carry a flow (not `lost_events`).
    flow_lines: usize,
    /// `namespace/name` and labels of every pod of the lab's cluster.
    pods: Vec<(String, serde_json::Value)>,
}

/// The lab as a child process: on drop (a panic, a deadline) it gets
/// SIGTERM (the lab then removes everything itself) and, if it does not
/// exit, SIGKILL; then whatever is left under its names is removed.
struct LabProcess {
    child: Child,
}

impl LabProcess {
    fn names(&self) -> (String, PathBuf) {
        let pid = self.child.id();
        (
            format!("pal-lab-{pid}"),
            PathBuf::from(format!("/sys/fs/bpf/palisade-lab-{pid}")),
        )
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: a plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    fn wait_until(&mut self, deadline: Instant) -> Option<std::process::ExitStatus> {
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => return None,
            }
        }
        None
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGTERM);
            if self
                .wait_until(Instant::now() + Duration::from_secs(30))
                .is_none()
            {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // Idempotent: after a clean exit there is nothing left to remove.
        let (node_netns, pin_root) = self.names();
        if let Ok(rd) = std::fs::read_dir("/var/run/netns") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name == node_netns || name.starts_with(&format!("{node_netns}-")) {
                    // Servers the lab started in its pods (dnsmasq) would outlive a SIGKILL.
                    if let Ok(out) = Command::new("ip").args(["netns", "pids", &name]).output() {
                        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                            if let Ok(pid) = pid.parse::<libc::pid_t>() {
                                // SAFETY: kill(2) of a process inside the lab's own namespace.
                                unsafe {
                                    libc::kill(pid, libc::SIGKILL);
                                }
                            }
                        }
                    }
                }
            }
        }
        palisade_agent::purge(&node_netns, &pin_root);
        let pid = self.child.id();
        let tmp = std::env::temp_dir();
        let _ = std::fs::remove_dir_all(tmp.join(format!("palisade-lab-{pid}")));
        let _ = std::fs::remove_dir_all(tmp.join(format!("palisade-lab-dnsmasq-{pid}")));
    }
}

fn run_lab() -> Result<LabRun, String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("lab-flows-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let flows = dir.join("flows.json");
    let manifests = dir.join("manifests");
    let stdout = std::fs::File::create(dir.join("lab.stdout")).map_err(|e| e.to_string())?;
    let stderr = std::fs::File::create(dir.join("lab.stderr")).map_err(|e| e.to_string())?;
    let child = Command::new(BIN)
        .arg("lab")
        .arg("--flows-out")
        .arg(&flows)
        .arg("--manifests-out")
        .arg(&manifests)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot run palisade lab: {e}"))?;
    let started = Instant::now();
    let mut lab = LabProcess { child };
    let status = lab.wait_until(started + LAB_DEADLINE);
    drop(lab);
    let out = std::fs::read_to_string(dir.join("lab.stdout")).unwrap_or_default();
    let err = std::fs::read_to_string(dir.join("lab.stderr")).unwrap_or_default();
    match status {
        Some(st) if st.success() => {}
        Some(st) => return Err(format!("palisade lab failed ({st}):\n{out}\n{err}")),
        None => {
            return Err(format!(
                "palisade lab did not finish in {LAB_DEADLINE:?}:\n{out}\n{err}"
            ));
        }
    }
    eprintln!(
        "lab ran in {:.1} s; its files are in {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    let text = std::fs::read_to_string(&flows).map_err(|e| format!("{}: {e}", flows.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    // The lab says how many flows its agent recorded; the file has them all.
    let said = out
        .lines()
        .find_map(|l| l.strip_prefix("Wrote the "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| format!("the lab did not say how many flows it wrote:\n{out}"))?;
    if said != lines.len() {
        return Err(format!(
            "the lab recorded {said} flows but wrote {} lines",
            lines.len()
        ));
    }
    let flow_lines = lines.iter().filter(|l| l.starts_with("{\"flow\"")).count();
    let cluster = std::fs::read_to_string(manifests.join("cluster.yaml"))
        .map_err(|e| format!("cluster.yaml: {e}"))?;
    let mut pods = Vec::new();
    for doc in cluster.split("---\n").filter(|d| !d.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(doc).map_err(|e| format!("cluster.yaml: {e}: {doc}"))?;
        if v["kind"] == "Pod" {
            let m = &v["metadata"];
            pods.push((
                format!(
                    "{}/{}",
                    m["namespace"].as_str().unwrap_or(""),
                    m["name"].as_str().unwrap_or("")
                ),
                m["labels"].clone(),
            ));
        }
    }
    Ok(LabRun {
        dir,
        flows,
        manifests,
        lines: lines.len(),
        flow_lines,
        pods,
    })
}

/// The one lab run all tests of this file share.
fn lab() -> Option<&'static LabRun> {
    static LAB: OnceLock<Result<LabRun, String>> = OnceLock::new();
    if !is_root() {
        eprintln!("skipped: needs root");
        return None;
    }
    match LAB.get_or_init(run_lab) {
        Ok(l) => Some(l),
        Err(e) => panic!("{e}"),
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The reader's verdict on a flows file: (exit success, summary, stderr).
fn hubble_reader(flows: &Path, work: &Path) -> (bool, serde_json::Value, String) {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).expect("reader work dir");
    let out = run(Command::new(PYTHON)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/hubble_reader/hubble_reader.py"))
        .arg("--proto-dir")
        .arg(workspace().join("proto"))
        .arg("--work-dir")
        .arg(work)
        .arg(flows));
    let summary = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the reader printed no summary ({e}); needs Debian's protobuf-compiler and python3-protobuf (make deps):\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (out.status.success(), summary, text(&out.stderr))
}

fn count(v: &serde_json::Value, key: &str, what: &str) -> u64 {
    v[key][what].as_u64().unwrap_or(0)
}

#[test]
fn lab_flows_decode_with_a_hubble_format_reader() {
    let Some(lab) = lab() else { return };
    let (ok, s, err) = hubble_reader(&lab.flows, &lab.dir.join("reader"));
    assert!(
        ok,
        "the Hubble-format reader rejected the lab's flows:\n{err}"
    );
    let n = lab.lines as u64;
    assert!(n > 0, "the lab wrote no flows");
    assert_eq!(s["lines"], n);
    assert_eq!(s["decoded"], n, "{s:#}");
    assert_eq!(s["round_tripped"], n, "{s:#}");
    assert_eq!(s["flows"], lab.flow_lines as u64);
    // Every kind of flow the lab produces.
    for kind in [
        "L3_L4 FORWARDED",
        "L3_L4 DROPPED",
        "L3_L4 AUDIT",
        "L7 http FORWARDED",
        "L7 http DROPPED",
        "L7 dns FORWARDED",
        "L7 dns DROPPED",
    ] {
        assert!(count(&s, "kinds", kind) > 0, "no {kind} flow: {s:#}");
    }
    for l4 in ["TCP", "UDP", "ICMPv4"] {
        assert!(count(&s, "l4", l4) > 0, "no {l4} flow: {s:#}");
    }
    assert!(count(&s, "drop_reasons", "POLICY_DENIED") > 0, "{s:#}");
    // Attribution: default deny names the selecting policies (and
    // policy_match_type 0, as Hubble), rule drops name the rule section,
    // AUDIT names the audited policy.
    assert!(s["default_deny_attributed"].as_u64() > Some(0), "{s:#}");
    assert!(s["rule_attributed_drops"].as_u64() > Some(0), "{s:#}");
    assert!(s["audit_attributed"].as_u64() > Some(0), "{s:#}");
    // Every verdict carries Palisade's explanation, and it unpacks.
    assert_eq!(s["explanations"], s["flows"], "{s:#}");
    // Every lab pod appears in some flow.
    let seen: BTreeSet<&str> = s["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    for (pod, _) in &lab.pods {
        assert!(seen.contains(pod.as_str()), "{pod} is in no flow: {seen:?}");
    }

    // The reader can fail: a wrong field name, an extension written as an
    // array (not one Any), an enum value Hubble does not have.
    let first = std::fs::read_to_string(&lab.flows)
        .expect("flows")
        .lines()
        .find(|l| l.contains("\"IP\":") && l.contains("\"extensions\":{"))
        .expect("a flow with IP and extensions")
        .to_string();
    let bad = [
        first.replacen("\"IP\":", "\"ip\":", 1),
        first
            .replacen("\"extensions\":{", "\"extensions\":[{", 1)
            .replacen("},\"Summary\"", "}],\"Summary\"", 1),
        first.replacen("\"Type\":\"L3_L4\"", "\"Type\":\"L4\"", 1),
    ];
    for (i, b) in bad.iter().enumerate() {
        assert_ne!(b, &first, "corruption {i} did not apply");
    }
    let bad_file = lab.dir.join("bad-flows.json");
    std::fs::write(&bad_file, bad.join("\n") + "\n").expect("write");
    let (ok, s, err) = hubble_reader(&bad_file, &lab.dir.join("reader-bad"));
    assert!(!ok, "the reader accepted corrupted flows: {s:#}");
    assert_eq!(s["decoded"], 0, "{s:#}\n{err}");
    assert!(
        err.contains("has no field named \"ip\""),
        "the reader did not name the bad field:\n{err}"
    );
}

/// Headless Chromium (Debian's `chromium`) with a fresh profile.
fn chromium(args: &[&str], profile: &Path) -> Output {
    run(Command::new("chromium")
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
        .args(args))
}

#[test]
fn service_map_of_the_lab_shows_every_pod_and_both_verdicts() {
    let Some(lab) = lab() else { return };
    let page = lab.dir.join("map.html");
    let out = run(Command::new(BIN)
        .args(["servicemap", "--input-file"])
        .arg(&lab.flows)
        .arg("--output")
        .arg(&page));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let url = format!("file://{}", page.display());
    let dom = chromium(&["--dump-dom", &url], &lab.dir.join("profile-dom"));
    let dom = text(&dom.stdout);

    // The script ran over every flow.
    let stats = regex::Regex::new(
        r"(\d+) workloads, (\d+) connections on (\d+) edges, (\d+) of (\d+) flows shown",
    )
    .expect("regex");
    let c = stats
        .captures(&dom)
        .unwrap_or_else(|| panic!("the page's script did not run: {dom}"));
    assert_eq!(c[4], c[5]);
    assert_eq!(c[5].parse::<usize>().ok(), Some(lab.flow_lines));

    // Every lab pod is a node: the map groups pods by their `app` label
    // (else the pod name) within a namespace.
    let node = regex::Regex::new(
        r#"<g class="node ([a-z-]+)"><rect[^>]*>(?:</rect>)?<text[^>]*>([^<]*)</text>(?:<text[^>]*>([^<]*)</text>)?</g>"#,
    )
    .expect("regex");
    let nodes: BTreeSet<(String, String, String)> = node
        .captures_iter(&dom)
        .map(|c| {
            (
                c[1].to_string(),
                c.get(3).map_or("", |m| m.as_str()).to_string(),
                c[2].to_string(),
            )
        })
        .collect();
    assert_eq!(
        nodes.len().to_string(),
        c[1],
        "nodes drawn vs the stats line"
    );
    for (pod, labels) in &lab.pods {
        let (ns, name) = pod.split_once('/').expect("ns/name");
        let app = labels["app"].as_str().unwrap_or(name);
        assert!(
            nodes.contains(&("pod".into(), ns.into(), app.into())),
            "{pod} (workload {ns}/{app}) is not on the map: {nodes:?}"
        );
    }
    assert!(
        nodes.iter().any(|(k, _, _)| k == "world"),
        "the lab's world peer is not on the map: {nodes:?}"
    );

    // Edges: one per (source, destination), one lane per verdict seen on
    // it (AUDIT apart from FORWARDED), its label one line per port with the
    // port's counts; forwarded-only edges, audited ones and edges with drops
    // are all there.
    let edge = regex::Regex::new(
        r#"(?s)<g class="edge ([a-z ]+)" data-source="([^"]*)" data-destination="([^"]*)" data-ports="([^"]*)"[^>]*><title>([^<]*)</title><path class="hit" d="([^"]+)"(.*?)</g>"#,
    )
    .expect("regex");
    let lane = regex::Regex::new(r#"<path class="lane ([a-z]+)" d="([^"]+)" stroke="([^"]+)""#)
        .expect("regex");
    let label = regex::Regex::new(
        r#"(?s)<g class="edge-label ([a-z ]+)" data-source="([^"]*)" data-destination="([^"]*)"><title>[^<]*</title><rect class="label-bg"([^>]*)>(?:</rect>)?<text[^>]*>(.*?)</text></g>"#,
    )
    .expect("regex");
    let port = regex::Regex::new(
        r#"(?s)<tspan class="port ([a-z ]+)" data-port="([^"]*)" data-forwarded="(\d+)" data-dropped="(\d+)" data-audit="(\d+)"[^>]*>(.*?)</tspan></tspan>"#,
    )
    .expect("regex");
    let tag = regex::Regex::new("<[^>]*>").expect("regex");
    let box_of = |attrs: &str| -> [f64; 4] {
        let v = |k: &str| -> f64 {
            regex::Regex::new(&format!(r#"\b{k}="(-?[0-9.]+)""#))
                .expect("regex")
                .captures(attrs)
                .and_then(|c| c[1].parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {attrs}"))
        };
        [v("x"), v("y"), v("x") + v("width"), v("y") + v("height")]
    };
    let overlap =
        |a: &[f64; 4], b: &[f64; 4]| a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
    let colour = |v: &str| match v {
        "forwarded" => "#2e7d32",
        "dropped" => "#c62828",
        "audit" => "#ef6c00",
        v => panic!("unknown verdict {v}"),
    };
    // (verdict classes, source, destination, ports, title, path, lanes)
    type Drawn = (
        Vec<String>,
        String,
        String,
        String,
        String,
        String,
        Vec<(String, String)>,
    );
    let edges: Vec<Drawn> = edge
        .captures_iter(&dom)
        .map(|c| {
            let lanes = lane
                .captures_iter(&c[7])
                .map(|l| {
                    assert_eq!(&l[3], colour(&l[1]), "lane colour: {}", &c[5]);
                    (l[1].to_string(), l[2].to_string())
                })
                .collect();
            (
                c[1].split_whitespace().map(String::from).collect(),
                c[2].to_string(),
                c[3].to_string(),
                c[4].to_string(),
                c[5].to_string(),
                c[6].to_string(),
                lanes,
            )
        })
        .collect();
    assert_eq!(
        edges.len().to_string(),
        c[3],
        "edges drawn vs the stats line"
    );
    let pairs: BTreeSet<(&str, &str)> = edges.iter().map(|e| (&e.1[..], &e.2[..])).collect();
    assert_eq!(
        pairs.len(),
        edges.len(),
        "two edges for one pair: {edges:#?}"
    );
    let mut paths: Vec<&str> = edges.iter().map(|e| &e.5[..]).collect();
    paths.extend(edges.iter().flat_map(|e| e.6.iter().map(|l| &l.1[..])));
    let distinct: BTreeSet<&str> = paths.iter().copied().collect();
    assert_eq!(distinct.len(), paths.len(), "edges drawn on one path");
    // (port, forwarded, dropped, audit) per port, and the label's box, by edge.
    type Ports = Vec<(String, u64, u64, u64)>;
    let mut labelled: std::collections::BTreeMap<(String, String), (Ports, [f64; 4])> =
        Default::default();
    for l in label.captures_iter(&dom) {
        let ports: Ports = port
            .captures_iter(&l[5])
            .map(|p| {
                let n = |i: usize| p[i].parse::<u64>().expect("count");
                let shown = tag.replace_all(&p[6], "").to_string();
                let mut want = vec![];
                for (v, k, sym) in [
                    ("forwarded", n(3), "✓"),
                    ("dropped", n(4), "✗"),
                    ("audit", n(5), " audit"),
                ] {
                    if k > 0 {
                        want.push(v);
                        assert!(
                            shown.contains(&format!("{k}{sym}")),
                            "{shown} does not show {k} {v}"
                        );
                    }
                }
                assert_eq!(p[1].split_whitespace().collect::<Vec<_>>(), want, "{shown}");
                (p[2].to_string(), n(3), n(4), n(5))
            })
            .collect();
        let key = (l[2].to_string(), l[3].to_string());
        assert!(
            labelled.insert(key, (ports, box_of(&l[4]))).is_none(),
            "two labels for {}",
            &l[2]
        );
    }
    assert_eq!(labelled.len(), edges.len(), "one label per edge");
    let connections: usize = labelled.values().map(|l| l.0.len()).sum();
    assert_eq!(
        connections.to_string(),
        c[2],
        "ports labelled vs the stats line"
    );
    for (class, src, dst, ports, title, _, lanes) in &edges {
        let (p, _) = &labelled[&(src.clone(), dst.clone())];
        let names: Vec<&str> = p.iter().map(|p| &p.0[..]).collect();
        assert_eq!(names.join(" "), *ports, "the label names the edge's ports");
        // The edge shows every verdict any of its ports saw, AUDIT included.
        let sum = |f: fn(&(String, u64, u64, u64)) -> u64| p.iter().map(f).sum::<u64>();
        let want: Vec<&str> = [
            ("forwarded", sum(|p| p.1)),
            ("dropped", sum(|p| p.2)),
            ("audit", sum(|p| p.3)),
        ]
        .into_iter()
        .filter(|v| v.1 > 0)
        .map(|v| v.0)
        .collect();
        assert_eq!(class, &want, "edge {title} is drawn as {class:?}");
        let lanes: Vec<&str> = lanes.iter().map(|l| &l.0[..]).collect();
        assert_eq!(lanes, want, "one lane per verdict: {title}");
    }
    assert!(edges.iter().any(|e| e.0 == ["forwarded"]), "{edges:#?}");
    // The lab's audit section: connections seen audited.
    assert!(
        edges.iter().any(|e| e.0.iter().any(|v| v == "audit")),
        "{edges:#?}"
    );
    assert!(
        edges.iter().any(|e| e.0.iter().any(|v| v == "dropped")),
        "no edge with drops: {edges:#?}"
    );
    // The lab forwards frontend -> backend on 80/TCP with no policy and
    // drops it under default-deny: one port, both verdicts.
    let fe_be = edges
        .iter()
        .find(|e| e.1 == "default/frontend" && e.2 == "default/myapp")
        .unwrap_or_else(|| panic!("no default/frontend → default/myapp edge: {edges:#?}"));
    let p80 = labelled[&(fe_be.1.clone(), fe_be.2.clone())]
        .0
        .iter()
        .find(|p| p.0 == "80/TCP")
        .cloned()
        .unwrap_or_else(|| panic!("no 80/TCP on {fe_be:?}"));
    assert!(p80.1 > 0 && p80.2 > 0, "{p80:?}");
    assert!(
        fe_be.4.starts_with("default/frontend → default/myapp\n")
            && fe_be.4.contains("\n80/TCP: ")
            && fe_be
                .4
                .contains("CiliumNetworkPolicy default/default-deny (default deny)"),
        "the edge does not name the rules that decided it: {fe_be:?}"
    );
    // No label over another label or a workload.
    let node_boxes: Vec<[f64; 4]> = regex::Regex::new(r#"<g class="node [a-z-]+"><rect ([^>]*)>"#)
        .expect("regex")
        .captures_iter(&dom)
        .map(|c| box_of(&c[1]))
        .collect();
    let boxes: Vec<(&(String, String), &[f64; 4])> =
        labelled.iter().map(|(k, v)| (k, &v.1)).collect();
    for (i, (ka, a)) in boxes.iter().enumerate() {
        for (kb, b) in &boxes[i + 1..] {
            assert!(!overlap(a, b), "the labels of {ka:?} and {kb:?} overprint");
        }
        for n in &node_boxes {
            assert!(!overlap(a, n), "the label of {ka:?} is over a workload");
        }
    }

    let shot = lab.dir.join("servicemap-lab.png");
    let out = chromium(
        &[
            "--window-size=1200,900",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
        &lab.dir.join("profile-shot"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "the screenshot is not a real PNG"
    );
    eprintln!("screenshot: {}", shot.display());
}

fn impact(lab: &LabRun, policy: &str) -> (Option<i32>, serde_json::Value) {
    let out = run(Command::new(BIN)
        .args(["policy", "impact", "-f"])
        .arg(lab.manifests.join("cluster.yaml"))
        .arg("-f")
        .arg(lab.manifests.join("policies").join(policy))
        .arg("--flows")
        .arg(&lab.flows)
        .args(["-o", "json"]));
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "policy impact -f {policy}: no JSON ({e}):\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (out.status.code(), v)
}

fn change<'a>(
    v: &'a serde_json::Value,
    kind: &str,
    from: &str,
    to: &str,
    port: &str,
) -> &'a serde_json::Value {
    v["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["change"] == kind && c["from"] == from && c["to"] == to && c["port"] == port)
        .unwrap_or_else(|| panic!("no {kind} {from} -> {to} {port}: {v:#}"))
}

#[test]
fn impact_and_audit_replay_the_lab_flows_against_its_policies() {
    let Some(lab) = lab() else { return };
    // The clusterwide backend policy alone: it admits role=frontend of every
    // namespace to role=backend, so what other lab policies dropped from
    // prod/frontend is newly allowed (by its rule), and what no policy
    // dropped from default/database is newly dropped (default deny).
    let (code, v) = impact(lab, "backend-ccnp.yaml");
    assert_eq!(code, Some(1), "something is newly dropped: {v:#}");
    let replayed = v["replayed"].as_u64().unwrap_or(0);
    assert!(replayed > 0, "{v:#}");
    assert_eq!(
        replayed + v["skipped"].as_u64().unwrap_or(0),
        lab.flow_lines as u64,
        "every flow is replayed or counted as skipped"
    );
    assert!(v["newly_dropped"].as_u64() > Some(0), "{v:#}");
    assert!(v["newly_allowed"].as_u64() > Some(0), "{v:#}");
    let dropped = change(
        &v,
        "newly dropped",
        "default/database",
        "default/backend",
        "80/TCP",
    );
    assert_eq!(dropped["was"], "allowed");
    assert!(
        dropped["why"]
            .as_str()
            .is_some_and(|w| w.contains("CiliumClusterwideNetworkPolicy backend-from-frontend")),
        "{dropped:#}"
    );
    let allowed = change(
        &v,
        "newly allowed",
        "prod/frontend",
        "default/backend",
        "80/TCP",
    );
    assert_eq!(allowed["was"], "denied");
    assert!(
        allowed["why"]
            .as_str()
            .is_some_and(|w| w
                .contains("CiliumClusterwideNetworkPolicy backend-from-frontend spec.ingress[0]")),
        "{allowed:#}"
    );

    // Audit mode, offline: the lab's default-deny with the audit
    // annotation newly drops nothing; what it would deny is "audit".
    let (code, v) = impact(lab, "default-deny-audit.yaml");
    assert_eq!(code, Some(0), "an audited policy drops nothing: {v:#}");
    assert_eq!(v["newly_dropped"], 0, "{v:#}");
    let audit = change(
        &v,
        "audit changed",
        "default/frontend",
        "default/backend",
        "80/TCP",
    );
    assert_eq!(
        (&audit["was"], &audit["now"]),
        (&"allowed".into(), &"audit".into())
    );
    assert!(
        audit["why"]
            .as_str()
            .is_some_and(|w| w.contains("CiliumNetworkPolicy default/default-deny")),
        "{audit:#}"
    );
    // The same policy enforced: the same connection is newly dropped.
    let (code, v) = impact(lab, "default-deny.yaml");
    assert_eq!(code, Some(1), "{v:#}");
    change(
        &v,
        "newly dropped",
        "default/frontend",
        "default/backend",
        "80/TCP",
    );
    // `policy trace` on the lab's cluster says the audited denial is delivered.
    let out = run(Command::new(BIN)
        .args(["policy", "trace", "-f"])
        .arg(lab.manifests.join("cluster.yaml"))
        .arg("-f")
        .arg(lab.manifests.join("policies/default-deny-audit.yaml"))
        .args([
            "--from",
            "default/frontend",
            "--to",
            "default/backend",
            "--port",
            "80/TCP",
        ]));
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "delivered: {stdout}");
    assert!(
        stdout.contains("Audit: only audited policies (CiliumNetworkPolicy default/default-deny)"),
        "{stdout}"
    );
}
