//! The `palisade policy` commands through the built binary: exit codes,
//! summaries, output formats, stdin, directories, tests, traces and help.
//!
//! The shared acceptance data is found through `PALISADE_SHARED`, or as
//! `shared/` beside the checkout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn shared() -> PathBuf {
    if let Some(dir) = std::env::var_os("PALISADE_SHARED") {
        return PathBuf::from(dir);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    assert!(
        dir.is_dir(),
        "the shared test data is missing: expected {} (shared/ beside the checkout); \
         set PALISADE_SHARED to its location",
        dir.display()
    );
    dir
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn semantics(group: &str) -> PathBuf {
    shared().join("acceptance/semantics").join(group)
}

fn l7_manifests() -> PathBuf {
    semantics("l7-http").join("manifests.yaml")
}

/// Runs `palisade ARGS`, optionally with `stdin`.
fn palisade<I, S>(args: I, stdin: Option<&str>) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the palisade binary runs");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(text.as_bytes())
            .expect("stdin accepts input");
    }
    child.wait_with_output().expect("palisade finishes")
}

fn run(args: &[&str]) -> Output {
    palisade(args, None)
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited with a code, not a signal")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

fn last_line(o: &Output) -> String {
    stdout(o).lines().last().unwrap_or("").to_string()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

const VALID: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: from-frontend
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      app: backend
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: frontend
";

// ------------------------------------------------------------------ validate

#[test]
fn validate_valid_file_exits_0_with_summary() {
    let f = shared().join("corpus/k8s-examples/networkpolicy.yaml");
    let o = run(&["policy", "validate", p(&f)]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(
        last_line(&o),
        "1 policy in 1 file: 1 valid, 0 invalid",
        "{}",
        show(&o)
    );
}

#[test]
fn validate_invalid_files_exit_1_with_every_error_located() {
    let dir = shared().join("acceptance/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("invalid/ lists")
        .map(|e| e.expect("entry").path())
        .filter(|f| f.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut args = vec!["policy".to_string(), "validate".to_string()];
    args.extend(files.iter().map(|f| p(f).to_string()));
    let o = palisade(&args, None);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let n = files.len();
    assert_eq!(
        last_line(&o),
        format!("{n} policies in {n} files: 0 valid, {n} invalid"),
        "{}",
        show(&o)
    );
    let out = stdout(&o);
    for f in &files {
        // `# expect-error: line N: SUBSTRING`: an error line FILE:N:COL: ...
        let text = std::fs::read_to_string(f).expect("readable");
        let header = text.lines().next().unwrap_or("");
        let line: u32 = header
            .split("line ")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: bad header {header:?}", f.display()));
        let prefix = format!("{}:{line}:", p(f));
        let hit = out.lines().find(|l| l.starts_with(&prefix));
        let Some(hit) = hit else {
            panic!("no error line starting with {prefix}\n{}", show(&o));
        };
        // FILE:LINE:COLUMN: then a message.
        let rest = &hit[prefix.len()..];
        let (col, msg) = rest.split_once(": ").expect("FILE:LINE:COL: message");
        assert!(col.parse::<u32>().is_ok_and(|c| c > 0), "column in {hit}");
        assert!(!msg.is_empty(), "message in {hit}");
    }
}

#[test]
fn validate_mixed_files_counts_both() {
    let good = shared().join("corpus/k8s-examples/nginx-policy.yaml");
    let bad = shared().join("acceptance/invalid/to-internet.yaml");
    let o = run(&["policy", "validate", p(&good), p(&bad)]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert_eq!(
        last_line(&o),
        "2 policies in 2 files: 1 valid, 1 invalid",
        "{}",
        show(&o)
    );
    assert!(
        stdout(&o).contains(&format!(
            "{}:12:20: spec.egress[0].toEntities: unsupported entity \"internet\"",
            p(&bad)
        )),
        "{}",
        show(&o)
    );
}

#[test]
fn validate_json_output_parses() {
    let good = shared().join("corpus/k8s-examples/nginx-policy.yaml");
    let bad = shared().join("acceptance/invalid/from-requires.yaml");
    let o = run(&["policy", "validate", "-o", "json", p(&good), p(&bad)]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(v["policies"], 2);
    assert_eq!(v["files"], 2);
    assert_eq!(v["valid"], 1);
    assert_eq!(v["invalid"], 1);
    let errors = v["errors"].as_array().expect("errors is a list");
    assert_eq!(errors.len(), 1, "{v:#}");
    let e = &errors[0];
    assert_eq!(e["file"], p(&bad));
    assert_eq!(e["line"], 12);
    assert!(e["column"].as_u64().is_some_and(|c| c > 0));
    assert_eq!(e["field"], "spec.ingress[0].fromRequires");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("fromRequires"))
    );
    // All valid: an empty error list and exit 0.
    let o = run(&["policy", "validate", "--output", "json", p(&good)]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(v["errors"], serde_json::json!([]));
}

#[test]
fn validate_reads_stdin() {
    let o = palisade(["policy", "validate", "-"], Some(VALID));
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(last_line(&o), "1 policy in 1 file: 1 valid, 0 invalid");
    let bad = VALID.replace("fromEndpoints", "fromEndpoint");
    let o = palisade(["policy", "validate", "-"], Some(&bad));
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        stdout(&o).contains("<stdin>:11:5: spec.ingress[0].fromEndpoint: unknown field"),
        "{}",
        show(&o)
    );
}

#[test]
fn validate_directory_recursively() {
    let dir = shared().join("corpus/k8s-examples");
    let o = run(&["policy", "validate", p(&dir)]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(last_line(&o), "9 policies in 9 files: 9 valid, 0 invalid");
    // cilium-examples has subdirectories and invalid files.
    let dir = shared().join("corpus/cilium-examples");
    let o = run(&["policy", "validate", p(&dir)]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        last_line(&o).contains(" in 136 files: "),
        "every file below the directory: {}",
        last_line(&o)
    );
    assert!(stdout(&o).contains("l3/requires/requires.yaml:"));
}

#[test]
fn validate_flags_enable_gated_features() {
    let f = shared().join("corpus/cilium-examples/l3/entities/customnodes.yaml");
    let o = run(&["policy", "validate", p(&f)]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stdout(&o).contains("enable-node-selector-labels"));
    let o = run(&["policy", "validate", "--enable-node-selector-labels", p(&f)]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let f = shared().join("corpus/cilium-examples/host/allow-extended-protocols.yaml");
    let o = run(&[
        "policy",
        "validate",
        "--enable-extended-ip-protocols",
        p(&f),
    ]);
    assert_eq!(code(&o), 0, "{}", show(&o));
}

#[test]
fn validate_nonexistent_path_exits_2() {
    let o = run(&["policy", "validate", "/nonexistent/palisade/policy.yaml"]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert!(
        stderr(&o).contains("/nonexistent/palisade/policy.yaml"),
        "the error names the path: {}",
        show(&o)
    );
}

#[test]
fn usage_errors_exit_2() {
    let o = run(&["policy", "validate"]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    let o = run(&["policy", "validate", "--output", "xml", "x.yaml"]);
    assert_eq!(code(&o), 2, "{}", show(&o));
}

// ----------------------------------------------------------------------- get

#[test]
fn get_yaml_makes_defaults_explicit() {
    let f = data("any-protocol.yaml");
    let o = run(&["policy", "get", "-f", p(&f)]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let out = stdout(&o);
    let docs = get_documents(&out);
    assert_eq!(docs.len(), 1, "{out}");
    let ports = &docs[0]["rules"][0]["ingress"][0]["toPorts"][0]["ports"];
    // No protocol: ANY, expanded to TCP, UDP and SCTP; the port is a number.
    assert_eq!(ports[0]["port"], 80, "{out}");
    assert_eq!(
        ports[0]["protocols"],
        serde_json::json!(["TCP", "UDP", "SCTP"]),
        "{out}"
    );
    // A named port is lower-cased and the protocol upper-cased.
    assert_eq!(ports[1]["port"], "http-alt", "{out}");
    assert_eq!(ports[1]["protocols"], serde_json::json!(["TCP"]), "{out}");
    // A range keeps its end.
    assert_eq!(ports[2]["port"], 8000, "{out}");
    assert_eq!(ports[2]["endPort"], 8100, "{out}");
    // The namespace is explicit.
    assert_eq!(docs[0]["id"]["namespace"], "shop", "{out}");
    // Default deny is explicit for the direction with rules.
    assert_eq!(docs[0]["rules"][0]["defaultDeny"]["ingress"], true, "{out}");
}

/// The policies of `data/any-protocol.yaml` as `policy get -o json` prints
/// them, after checking that the YAML output `yaml` has as many documents
/// and shows the same normalized values.
fn get_documents(yaml: &str) -> Vec<serde_json::Value> {
    let n = yaml.lines().filter(|l| *l == "---").count();
    let f = data("any-protocol.yaml");
    let o = run(&["policy", "get", "-f", p(&f), "-o", "json"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    let docs = v.as_array().cloned().unwrap_or_default();
    assert_eq!(docs.len(), n, "as many YAML documents as JSON policies");
    assert!(
        yaml.contains("- TCP\n") && yaml.contains("- SCTP\n"),
        "{yaml}"
    );
    assert!(yaml.contains("port: http-alt"), "{yaml}");
    assert!(yaml.contains("endPort: 8100"), "{yaml}");
    docs
}

#[test]
fn get_json_parses_and_covers_every_policy() {
    let f = l7_manifests();
    let o = run(&["policy", "get", "-f", p(&f), "-o", "json"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    let names: Vec<&str> = v
        .as_array()
        .expect("a list of policies")
        .iter()
        .filter_map(|p| p["id"]["name"].as_str())
        .collect();
    assert_eq!(names, ["example-policy", "layer7-example", "catalog-items"]);
}

#[test]
fn get_reads_stdin() {
    let o = palisade(["policy", "get", "-f", "-", "-o", "json"], Some(VALID));
    assert_eq!(code(&o), 0, "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(v[0]["id"]["name"], "from-frontend");
}

#[test]
fn get_of_invalid_input_prints_errors_and_fails() {
    let f = shared().join("acceptance/invalid/to-internet.yaml");
    let o = run(&["policy", "get", "-f", p(&f)]);
    assert_ne!(code(&o), 0, "{}", show(&o));
    assert!(stdout(&o).is_empty(), "nothing printed: {}", show(&o));
    assert!(
        stderr(&o).contains(&format!("{}:12:20:", p(&f))),
        "{}",
        show(&o)
    );
}

/// `policy get` should show the policy "as the engine understood it, with
/// defaults made explicit (namespace scoping, ...)" (issue 2). Today the
/// subject and peer selectors of a CiliumNetworkPolicy are printed without
/// the `k8s:io.kubernetes.pod.namespace` requirement the engine adds when it
/// compiles the policy (repository::compile_policy), so a reader cannot see
/// that `fromEndpoints` only selects pods of the policy's own namespace.
#[test]
fn get_shows_namespace_scoping() {
    let o = palisade(["policy", "get", "-f", "-", "-o", "json"], Some(VALID));
    assert_eq!(code(&o), 0, "{}", show(&o));
    let out = stdout(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    // The effective form shows the scoping Cilium applies at parse time.
    let subject = v[0]["effective"][0]["subject"].to_string();
    let peers = v[0]["effective"][0]["elements"][0]["peers"].to_string();
    assert!(subject.contains("io.kubernetes.pod.namespace"), "{out}");
    assert!(peers.contains("io.kubernetes.pod.namespace"), "{out}");
}

// ---------------------------------------------------------------------- test

fn count_tests(tests_yaml: &Path) -> usize {
    std::fs::read_to_string(tests_yaml)
        .expect("tests.yaml readable")
        .lines()
        .filter(|l| l.trim_start().starts_with("- name:"))
        .count()
}

#[test]
fn test_every_semantics_group_passes() {
    let dir = shared().join("acceptance/semantics");
    let mut groups: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("semantics/ lists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    groups.sort();
    assert!(groups.len() >= 9, "the nine groups are there");
    let mut failures = Vec::new();
    for g in &groups {
        let manifests = g.join("manifests.yaml");
        let tests = g.join("tests.yaml");
        let o = run(&["policy", "test", "-f", p(&manifests), p(&tests)]);
        let n = count_tests(&tests);
        let want = format!("{n} passed, 0 failed");
        if code(&o) != 0 || last_line(&o) != want {
            failures.push(format!(
                "{}: expected exit 0 and {want:?}\n{}",
                g.display(),
                show(&o)
            ));
            continue;
        }
        let passes = stdout(&o).lines().filter(|l| l.starts_with("PASS")).count();
        if passes != n {
            failures.push(format!(
                "{}: {passes} PASS lines for {n} tests",
                g.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn test_with_a_failing_case_exits_1_and_explains() {
    let o = run(&[
        "policy",
        "test",
        "-f",
        p(&l7_manifests()),
        p(&data("one-failing.tests.yaml")),
    ]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let out = stdout(&o);
    assert_eq!(last_line(&o), "2 passed, 1 failed", "{out}");
    let fail = out
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .unwrap_or_else(|| panic!("a FAIL line: {out}"));
    assert!(
        fail.contains("frontend may POST /public on myapp"),
        "{fail}"
    );
    assert!(fail.contains("expected allowed, got denied"), "{fail}");
    // The explanation names the rule whose L7 part rejected the request.
    assert!(
        out.contains("POST /public matches no http rule of CiliumNetworkPolicy default/example-policy spec.ingress[0].toPorts[0]"),
        "{out}"
    );
    assert_eq!(out.lines().filter(|l| l.starts_with("PASS")).count(), 2);
}

#[test]
fn test_with_json_output_prints_one_object_per_case() {
    let o = run(&[
        "policy",
        "test",
        "-f",
        p(&l7_manifests()),
        p(&data("one-failing.tests.yaml")),
        "-o",
        "json",
    ]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let outcomes: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(outcomes.len(), 3);
    let passed: Vec<bool> = outcomes
        .iter()
        .map(|v| v["passed"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(passed, [true, false, true]);
}

#[test]
fn test_with_an_invalid_tests_file_exits_2() {
    let tests = data("invalid.tests.yaml");
    let o = run(&["policy", "test", "-f", p(&l7_manifests()), p(&tests)]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}:5:5: tests[0].prot: unknown field", p(&tests))),
        "{err}"
    );
    assert!(err.contains("did you mean \"port\""), "{err}");
    assert!(err.contains(":11:13: tests[1].expect:"), "{err}");
    assert!(stdout(&o).is_empty(), "no case ran: {}", show(&o));
}

#[test]
fn test_with_invalid_manifests_exits_2() {
    let bad = shared().join("acceptance/invalid/to-internet.yaml");
    let tests = semantics("l7-http").join("tests.yaml");
    let o = run(&["policy", "test", "-f", p(&bad), p(&tests)]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert!(
        stderr(&o).contains(&format!("{}:12:20:", p(&bad))),
        "{}",
        show(&o)
    );
}

#[test]
fn test_with_a_missing_tests_file_exits_2() {
    let o = run(&[
        "policy",
        "test",
        "-f",
        p(&l7_manifests()),
        "/nonexistent/tests.yaml",
    ]);
    assert_eq!(code(&o), 2, "{}", show(&o));
}

// --------------------------------------------------------------------- trace

fn trace(extra: &[&str]) -> Output {
    let f = l7_manifests();
    let mut args = vec!["policy", "trace", "-f", p(&f)];
    args.extend_from_slice(extra);
    // `f` outlives the call: run() copies the arguments.
    run(&args)
}

#[test]
fn trace_allowed_exits_0_and_names_the_rule() {
    let o = trace(&[
        "--from",
        "default/frontend",
        "--to",
        "default/myapp",
        "--port",
        "80/TCP",
        "--http-method",
        "GET",
        "--http-path",
        "/public",
    ]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let out = stdout(&o);
    assert_eq!(last_line(&o), "Verdict: ALLOWED", "{out}");
    assert!(
        out.contains(
            "allowed by CiliumNetworkPolicy default/example-policy spec.ingress[0].toPorts[0]"
        ),
        "{out}"
    );
    assert!(out.contains("GET /public allowed by"), "{out}");
}

#[test]
fn trace_denied_by_l7_exits_1_and_names_the_rule() {
    let o = trace(&[
        "--from",
        "default/frontend",
        "--to",
        "default/myapp",
        "--port",
        "80/TCP",
        "--http-method",
        "POST",
        "--http-path",
        "/public",
    ]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let out = stdout(&o);
    assert_eq!(last_line(&o), "Verdict: DENIED", "{out}");
    assert!(
        out.contains("POST /public matches no http rule of CiliumNetworkPolicy default/example-policy spec.ingress[0].toPorts[0]"),
        "{out}"
    );
}

#[test]
fn trace_default_deny_names_the_selecting_policy() {
    let o = trace(&[
        "--from",
        "default/myapp",
        "--to",
        "ip:8.8.8.8",
        "--port",
        "443/TCP",
    ]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let out = stdout(&o);
    assert!(
        out.contains("default deny: selected by CiliumNetworkPolicy default/example-policy"),
        "{out}"
    );
    assert_eq!(last_line(&o), "Verdict: DENIED", "{out}");
}

#[test]
fn trace_json_output_parses() {
    let o = trace(&[
        "--from",
        "default/frontend",
        "--to",
        "default/myapp",
        "--port",
        "80/TCP",
        "--http-method",
        "GET",
        "--http-path",
        "/public",
        "-o",
        "json",
    ]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    let r = trace_result(&v);
    assert_eq!(r["allowed"], true, "{v:#}");
    let dirs = r["directions"].as_array().expect("directions");
    assert_eq!(
        dirs.len(),
        2,
        "egress of the source, ingress of the destination"
    );
    let ingress = &dirs[1];
    assert_eq!(ingress["endpoint"], "default/myapp");
    assert_eq!(ingress["rules"][0]["policy"]["name"], "example-policy");
    assert_eq!(ingress["rules"][0]["section"], "spec.ingress[0].toPorts[0]");
    // Denied: the JSON says so and the exit code too.
    let o = trace(&[
        "--from",
        "default/myapp",
        "--to",
        "ip:8.8.8.8",
        "--port",
        "443/TCP",
        "-o",
        "json",
    ]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(trace_result(&v)["allowed"], false, "{v:#}");
}

/// The trace result: the whole document, or its `result` when the trace is
/// wrapped with audit information.
fn trace_result(v: &serde_json::Value) -> &serde_json::Value {
    if v.get("directions").is_some() {
        v
    } else {
        &v["result"]
    }
}

#[test]
fn trace_bad_input_exits_2() {
    let o = trace(&[
        "--from",
        "frontend",
        "--to",
        "default/myapp",
        "--port",
        "80/TCP",
    ]);
    assert_eq!(code(&o), 2, "a peer without namespace: {}", show(&o));
    let o = trace(&[
        "--from",
        "default/frontend",
        "--to",
        "default/myapp",
        "--port",
        "eighty",
    ]);
    assert_eq!(code(&o), 2, "a bad port: {}", show(&o));
    let o = trace(&["--from", "default/frontend", "--to", "default/myapp"]);
    assert_eq!(code(&o), 2, "--port is required: {}", show(&o));
}

// ------------------------------------------------------- connectivity / map

#[test]
fn connectivity_and_map_run() {
    let f = l7_manifests();
    let o = run(&["policy", "connectivity", "-f", p(&f), "--port", "80/TCP"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(stdout(&o).contains("default/myapp"), "{}", show(&o));
    let o = run(&["policy", "map", "-f", p(&f), "default/myapp"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let out = stdout(&o);
    assert!(
        out.contains("selected by CiliumNetworkPolicy default/example-policy"),
        "{out}"
    );
    assert!(out.contains("spec.ingress[0].toPorts[0]"), "{out}");
    let o = run(&["policy", "map", "-f", p(&f), "default/nobody"]);
    assert_eq!(code(&o), 2, "{}", show(&o));
}

/// `policy map -o json` fails with "error: key must be a string" (exit 2):
/// the policy map's entries are a map keyed by a struct, which serde_json
/// cannot write as an object.
#[test]
fn map_json_output_parses() {
    let f = l7_manifests();
    let o = run(&["policy", "map", "-f", p(&f), "-o", "json", "default/myapp"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    let entries = v["entries"].as_array().expect("entries");
    assert!(
        entries.iter().any(|e| e["verdict"]["Redirect"] == "Http"
            && e["derivedFrom"][0]
                .as_str()
                .is_some_and(|r| r.contains("example-policy"))),
        "{v}"
    );
}

// ---------------------------------------------------------------------- help

/// The subcommands `palisade policy --help` lists.
fn policy_subcommands() -> Vec<String> {
    let o = run(&["policy", "--help"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let out = stdout(&o);
    let mut names = Vec::new();
    let mut in_commands = false;
    for line in out.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            if !line.starts_with("  ") {
                break;
            }
            // Continuation lines of a wrapped description are indented deeper.
            if line.starts_with("   ") {
                continue;
            }
            if let Some(name) = line.split_whitespace().next()
                && name != "help"
            {
                names.push(name.to_string());
            }
        }
    }
    names
}

#[test]
fn every_policy_subcommand_help_has_an_example() {
    let names = policy_subcommands();
    for required in ["validate", "get", "test", "trace", "connectivity", "map"] {
        assert!(
            names.iter().any(|n| n == required),
            "policy {required} is listed: {names:?}"
        );
    }
    let mut missing = Vec::new();
    for name in &names {
        let o = run(&["policy", name, "--help"]);
        assert_eq!(code(&o), 0, "{}", show(&o));
        let out = stdout(&o);
        let has_example = out.contains("Example");
        let shows_itself = out.contains(&format!("palisade policy {name} "));
        if !(has_example && shows_itself) {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "--help without an example command line: {missing:?}"
    );
}

#[test]
fn help_states_exit_codes_where_they_carry_verdicts() {
    for name in ["validate", "test", "trace"] {
        let o = run(&["policy", name, "--help"]);
        assert!(
            stdout(&o).contains("Exit status:"),
            "policy {name} --help: {}",
            show(&o)
        );
    }
}
