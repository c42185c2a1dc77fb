//! Invalid manifests are rejected at the right line with the right words.
//!
//! Every file of `shared/acceptance/invalid/` and of `tests/invalid/` starts
//! with `# expect-error: line N: SUBSTRING`: validation must report an error
//! at line `N` whose message contains `SUBSTRING` (ignoring case). Each file
//! has exactly one mistake, so every error reported must be on that line too
//! (no cascade of follow-up errors elsewhere).

mod common;

use common::{files_under, parse_expectation, read, shared_dir, tests_dir};
use palisade_policy::decode::Diagnostic;
use palisade_policy::manifest::{Options, parse_file};
use std::path::{Path, PathBuf};

fn errors_of(path: &Path, text: &str) -> Vec<Diagnostic> {
    let name = path.display().to_string();
    parse_file(&name, text, &Options::default())
        .into_iter()
        .flat_map(|d| d.errors)
        .collect()
}

/// Checks one case; returns a description of what is wrong, if anything.
fn check_case(path: &Path) -> Option<String> {
    let text = read(path);
    let exp = match parse_expectation(&text) {
        Ok(e) => e,
        Err(e) => return Some(format!("{}: {e}", path.display())),
    };
    let errors = errors_of(path, &text);
    let shown = || {
        errors
            .iter()
            .map(|e| format!("\n      {e}"))
            .collect::<String>()
    };
    if errors.is_empty() {
        return Some(format!(
            "{}: accepted, but expected an error at line {} containing {:?}",
            path.display(),
            exp.line,
            exp.substring
        ));
    }
    let name = path.display().to_string();
    for e in &errors {
        if e.file != name || e.line == 0 || e.column == 0 {
            return Some(format!(
                "{}: error without a proper location: {e}",
                path.display()
            ));
        }
    }
    let hit = errors
        .iter()
        .any(|e| e.line == exp.line && e.message.to_lowercase().contains(&exp.substring));
    if !hit {
        return Some(format!(
            "{}: no error at line {} whose message contains {:?}; got:{}",
            path.display(),
            exp.line,
            exp.substring,
            shown()
        ));
    }
    if errors.iter().any(|e| e.line != exp.line) {
        return Some(format!(
            "{}: one mistake, but errors on other lines than {}:{}",
            path.display(),
            exp.line,
            shown()
        ));
    }
    None
}

fn check_dir(dir: &Path, min_files: usize) {
    let files: Vec<PathBuf> = files_under(dir, &["yaml", "yml", "json"]);
    assert!(
        files.len() >= min_files,
        "expected at least {min_files} cases in {}, found {}",
        dir.display(),
        files.len()
    );
    let failures: Vec<String> = files.iter().filter_map(|f| check_case(f)).collect();
    assert!(
        failures.is_empty(),
        "{} of {} invalid cases in {} are not rejected as expected:\n  {}",
        failures.len(),
        files.len(),
        dir.display(),
        failures.join("\n  ")
    );
}

#[test]
fn shared_invalid_cases_are_rejected_at_their_line() {
    check_dir(&shared_dir().join("acceptance/invalid"), 12);
}

#[test]
fn own_invalid_cases_are_rejected_at_their_line() {
    check_dir(&tests_dir().join("invalid"), 60);
}

#[test]
fn expectation_header_is_parsed() {
    let e = parse_expectation("# expect-error: line 12: fromRequires\nkind: x\n").expect("parses");
    assert_eq!(e.line, 12);
    assert_eq!(e.substring, "fromrequires");
    // A colon inside the substring is kept.
    let e = parse_expectation("# expect-error: line 3: a: b\n").expect("parses");
    assert_eq!(e.substring, "a: b");
    assert!(parse_expectation("apiVersion: v1\n").is_err());
    assert!(parse_expectation("# expect-error: line x: y\n").is_err());
}

// ------------------------------------------------------------ multi-error

const MANY_ERRORS: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: first
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      app: backend
  ingress:
  - fromEndpoint:
    - matchLabels:
        app: frontend
  - toPorts:
    - ports:
      - port: "70000"
        protocol: TCP
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: second-is-fine
  namespace: default
spec:
  endpointSelector: {}
  egress:
  - toEntities: [world]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: third
  namespace: oops
spec:
  endpointSelector: {}
  egress:
  - toEntities: [internet]
  - toCIDR: [10.0.0.0/40]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: fourth
spec:
  podSelector: {}
  policyTypes: [Ingres]
"#;

#[test]
fn every_error_of_every_document_is_reported() {
    let docs = parse_file("many.yaml", MANY_ERRORS, &Options::default());
    assert_eq!(docs.len(), 4, "one result per document");
    let names: Vec<&str> = docs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["first", "second-is-fine", "third", "fourth"]);
    assert!(docs[1].errors.is_empty() && docs[1].object.is_some());
    for i in [0, 2, 3] {
        assert!(docs[i].object.is_none(), "document {i} has errors");
    }
    let got: Vec<(u32, String)> = docs
        .iter()
        .flat_map(|d| &d.errors)
        .map(|e| (e.line, e.to_string()))
        .collect();
    let expected: &[(u32, &str)] = &[
        (11, "fromEndpoint"),
        (16, "70000"),
        (33, "namespace"),
        (37, "internet"),
        (38, "10.0.0.0/40"),
        (46, "Ingres"),
    ];
    for (line, word) in expected {
        assert!(
            got.iter().any(|(l, s)| l == line && s.contains(word)),
            "missing an error at line {line} mentioning {word:?}; got {got:#?}"
        );
    }
    assert_eq!(got.len(), expected.len(), "no extra errors: {got:#?}");
    for (_, s) in &got {
        assert!(s.starts_with("many.yaml:"), "located in the file: {s}");
    }
}

#[test]
fn every_rule_of_a_rule_list_is_reported() {
    let text = r#"[
  {"endpointSelector": {}, "ingress": [{"fromEntities": ["wrld"]}]},
  {"endpointSelector": {}, "egress": [{"toEntities": ["world"]}]},
  {"ingress": [{"fromEntities": ["world"]}]}
]"#;
    let docs = parse_file("rules.json", text, &Options::default());
    assert_eq!(docs.len(), 3, "one result per rule");
    assert_eq!(docs[0].errors.len(), 1);
    assert_eq!(docs[0].errors[0].line, 2);
    assert!(docs[0].errors[0].message.contains("did you mean \"world\""));
    assert!(docs[1].errors.is_empty());
    assert_eq!(docs[2].errors.len(), 1);
    assert_eq!(docs[2].errors[0].line, 4);
    assert!(docs[2].errors[0].message.contains("endpointSelector"));
}

#[test]
fn validation_reports_every_file() {
    // Every file of the shared invalid set, validated as one batch: each one
    // contributes its own located error; none stops the others.
    let dir = shared_dir().join("acceptance/invalid");
    let files = files_under(&dir, &["yaml"]);
    let mut reported = Vec::new();
    for f in &files {
        let errors = errors_of(f, &read(f));
        assert!(!errors.is_empty(), "{} has no error", f.display());
        reported.extend(errors);
    }
    for f in &files {
        let name = f.display().to_string();
        assert!(
            reported.iter().any(|e| e.file == name),
            "no error names {name}"
        );
    }
}

#[test]
fn errors_read_file_line_column_field_message() {
    let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: x\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEntities: [wrld]\n";
    let docs = parse_file("p.yaml", text, &Options::default());
    let e = &docs[0].errors[0];
    assert_eq!(
        e.to_string(),
        format!("p.yaml:8:20: spec.ingress[0].fromEntities: {}", e.message)
    );
    assert!(e.message.contains("unsupported entity \"wrld\""));
    assert!(e.message.contains("did you mean \"world\""));
}

#[test]
fn gated_features_follow_their_flags() {
    let extended = Options {
        enable_extended_ip_protocols: true,
        ..Options::default()
    };
    let nodes = Options {
        enable_node_selector_labels: true,
        ..Options::default()
    };
    let errors = |file: &str, opts: &Options| -> Vec<String> {
        let path = tests_dir().join("invalid").join(file);
        parse_file(&path.display().to_string(), &read(&path), opts)
            .into_iter()
            .flat_map(|d| d.errors)
            .map(|e| e.to_string())
            .collect()
    };
    // With the flag, fromNodes is valid.
    assert_eq!(
        errors("from-nodes-without-flag.yaml", &nodes),
        Vec::<String>::new()
    );
    // With the flag, VRRP is valid without a port...
    assert_eq!(
        errors("protocol-vrrp-without-flag.yaml", &extended),
        Vec::<String>::new()
    );
    // ...but still not with one.
    let e = errors("vrrp-with-port.yaml", &extended);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains(":13:") && e[0].contains("cannot name a port"),
        "{e:?}"
    );
    // An empty port is valid with the flag (read as every port).
    assert_eq!(errors("port-empty.yaml", &extended), Vec::<String>::new());
}
