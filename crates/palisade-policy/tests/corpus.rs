//! The corpus (`shared/corpus/*/`) against the verdicts of its `INDEX.md`.
//!
//! - `VALID`: no error, and at least one policy decoded.
//! - `INVALID`: at least one error naming the file, line, column and field,
//!   for the stated reason: the error names a field or word the reason
//!   column names (a backquoted identifier or a camelCase field name).
//! - `VALID (needs flag)`: rejected with default options by an error naming
//!   the flag; accepted with that one flag on.
//! - `CLUSTER STATE`, `NOT A POLICY`: no error, and nothing counted as a policy.
//!
//! Every row is checked and every mismatch listed before the test fails.

mod common;

use common::{files_under, read, shared_dir};
use palisade_policy::decode::Diagnostic;
use palisade_policy::manifest::{DocResult, Options, parse_file};
use std::collections::BTreeSet;
use std::path::Path;

#[derive(Debug)]
struct Row {
    path: String,
    expected: String,
    reason: String,
}

/// The rows of the `| path | kinds | expected | reason | ... |` file table.
fn index_rows(dir: &Path) -> Vec<Row> {
    let text = read(&dir.join("INDEX.md"));
    let mut rows = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let Some((path, rest)) = rest.split_once('`') else {
            continue;
        };
        // Cells are separated by " | "; reasons may contain escaped pipes (`\|`).
        let cells: Vec<String> = rest
            .replace("\\|", "\u{0}")
            .split('|')
            .map(|c| c.replace('\u{0}', "|").trim().to_string())
            .collect();
        // cells[0] is the rest of the path cell (empty), then kinds, expected, reason.
        assert!(
            cells.len() >= 4,
            "{}: malformed INDEX row: {line}",
            dir.display()
        );
        rows.push(Row {
            path: path.to_string(),
            expected: cells[2].clone(),
            reason: cells[3].clone(),
        });
    }
    // "As customnodes.json." refers to a sibling row: append that reason.
    let reasons: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.path.clone(), r.reason.clone()))
        .collect();
    for row in &mut rows {
        let Some(rest) = row.reason.strip_prefix("As ") else {
            continue;
        };
        let other = rest
            .split(|c: char| c.is_whitespace() || c == ',')
            .next()
            .unwrap_or("")
            .trim_end_matches('.');
        let sibling = match row.path.rsplit_once('/') {
            Some((parent, _)) => format!("{parent}/{other}"),
            None => other.to_string(),
        };
        if let Some((_, reason)) = reasons.iter().find(|(p, _)| *p == sibling) {
            row.reason = format!("{} ({reason})", row.reason);
        }
    }
    rows
}

fn parse(path: &Path, opts: &Options) -> Vec<DocResult> {
    parse_file(&path.display().to_string(), &read(path), opts)
}

fn errors(docs: &[DocResult]) -> Vec<&Diagnostic> {
    docs.iter().flat_map(|d| &d.errors).collect()
}

fn show(errs: &[&Diagnostic]) -> String {
    errs.iter().map(|e| format!("\n      {e}")).collect()
}

/// Names the reason column points at: backquoted identifiers (`auth`,
/// `"HTTP"`, `role: frontend` gives `role`) and camelCase words
/// (fromRequires, toCIDRSet).
fn reason_names(reason: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (i, chunk) in reason.split('`').enumerate() {
        if i % 2 == 1 {
            for word in chunk
                .split(|c: char| !is_ident(c))
                .filter(|w| !w.is_empty())
            {
                if word.chars().any(|c| c.is_ascii_alphabetic()) && word.len() > 2 {
                    names.insert(word.to_string());
                }
            }
        } else {
            for word in chunk.split(|c: char| !is_ident(c)) {
                let camel = word.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                    && word.chars().any(|c| c.is_ascii_uppercase());
                if camel {
                    names.insert(word.to_string());
                }
            }
        }
    }
    // Every field path runs through spec/specs: they say nothing about a cause.
    names.remove("spec");
    names.remove("specs");
    names
}

fn mentions(e: &Diagnostic, names: &BTreeSet<String>) -> bool {
    let segments: BTreeSet<&str> = e
        .field
        .split('.')
        .map(|s| s.split('[').next().unwrap_or(s))
        .collect();
    names.iter().any(|n| {
        segments.contains(n.as_str())
            || e.message.contains(&format!("\"{n}\""))
            || e.message.contains(&format!("{n} "))
    })
}

fn check_row(dir: &Path, row: &Row) -> Option<String> {
    let path = dir.join(&row.path);
    let name = path.display().to_string();
    if !path.is_file() {
        return Some(format!("{}: listed in INDEX.md but missing", row.path));
    }
    let default = parse(&path, &Options::default());
    let errs = errors(&default);
    let policies = default.iter().filter(|d| d.is_policy).count();
    let decoded = default
        .iter()
        .filter(|d| d.is_policy && d.object.is_some())
        .count();
    match row.expected.as_str() {
        "VALID" => {
            if !errs.is_empty() {
                return Some(format!("{}: VALID but rejected:{}", row.path, show(&errs)));
            }
            if decoded == 0 {
                return Some(format!("{}: VALID but no policy decoded", row.path));
            }
        }
        "INVALID" => {
            if errs.is_empty() {
                return Some(format!(
                    "{}: INVALID ({}) but accepted",
                    row.path, row.reason
                ));
            }
            let located: Vec<&&Diagnostic> = errs
                .iter()
                .filter(|e| e.file == name && e.line > 0 && e.column > 0 && !e.field.is_empty())
                .collect();
            if located.is_empty() {
                return Some(format!(
                    "{}: INVALID, but no error names file, line, column and field:{}",
                    row.path,
                    show(&errs)
                ));
            }
            let names = reason_names(&row.reason);
            if !names.is_empty() && !located.iter().any(|e| mentions(e, &names)) {
                return Some(format!(
                    "{}: INVALID, but no error is about {names:?} (the stated reason: {}):{}",
                    row.path,
                    row.reason,
                    show(&errs)
                ));
            }
        }
        "VALID (needs flag)" => {
            let (flag, opts) = if row.reason.contains("enable-node-selector-labels") {
                (
                    "enable-node-selector-labels",
                    Options {
                        enable_node_selector_labels: true,
                        ..Options::default()
                    },
                )
            } else if row.reason.contains("enable-extended-ip-protocols") {
                (
                    "enable-extended-ip-protocols",
                    Options {
                        enable_extended_ip_protocols: true,
                        ..Options::default()
                    },
                )
            } else {
                return Some(format!(
                    "{}: VALID (needs flag), but the reason names no known flag: {}",
                    row.path, row.reason
                ));
            };
            if errs.is_empty() {
                return Some(format!(
                    "{}: needs {flag}, but accepted without it",
                    row.path
                ));
            }
            if !errs.iter().any(|e| e.message.contains(flag)) {
                return Some(format!(
                    "{}: rejected without {flag}, but no error names the flag:{}",
                    row.path,
                    show(&errs)
                ));
            }
            let with_flag = parse(&path, &opts);
            let errs = errors(&with_flag);
            if !errs.is_empty() {
                return Some(format!(
                    "{}: still rejected with {flag} on:{}",
                    row.path,
                    show(&errs)
                ));
            }
        }
        "CLUSTER STATE" | "NOT A POLICY" => {
            if !errs.is_empty() {
                return Some(format!(
                    "{}: {} but reported:{}",
                    row.path,
                    row.expected,
                    show(&errs)
                ));
            }
            if policies > 0 {
                return Some(format!(
                    "{}: {} but {policies} document(s) counted as policies",
                    row.path, row.expected
                ));
            }
        }
        other => return Some(format!("{}: unknown verdict {other:?}", row.path)),
    }
    None
}

fn check_folder(folder: &str, expected_rows: usize) {
    let dir = shared_dir().join("corpus").join(folder);
    let rows = index_rows(&dir);
    assert_eq!(
        rows.len(),
        expected_rows,
        "{}/INDEX.md: expected {expected_rows} file rows",
        dir.display()
    );
    let mut mismatches: Vec<String> = rows.iter().filter_map(|r| check_row(&dir, r)).collect();
    // Every manifest in the folder is listed.
    let listed: BTreeSet<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    for f in files_under(&dir, &["yaml", "yml", "json"]) {
        let rel = f
            .strip_prefix(&dir)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if !listed.contains(rel.as_str()) {
            mismatches.push(format!("{rel}: present but not in INDEX.md"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} corpus files in {} disagree with INDEX.md:\n  {}",
        mismatches.len(),
        rows.len(),
        dir.display(),
        mismatches.join("\n  ")
    );
}

#[test]
fn cilium_examples_match_index() {
    check_folder("cilium-examples", 136);
}

#[test]
fn k8s_examples_match_index() {
    check_folder("k8s-examples", 9);
}

#[test]
fn index_verdict_counts_match_summary() {
    // The summary table of cilium-examples/INDEX.md: a parsing slip in
    // index_rows would silently skip rows; the counts catch it.
    let rows = index_rows(&shared_dir().join("corpus/cilium-examples"));
    let count = |v: &str| rows.iter().filter(|r| r.expected == v).count();
    assert_eq!(count("VALID"), 114);
    assert_eq!(count("INVALID"), 14);
    assert_eq!(count("VALID (needs flag)"), 4);
    assert_eq!(count("CLUSTER STATE"), 2);
    assert_eq!(count("NOT A POLICY"), 2);
}

#[test]
fn reason_names_are_extracted() {
    let n = reason_names("Egress rule carries `auth: {type: \"null\"}`; fromRequires (removed)");
    assert!(n.contains("auth") && n.contains("type") && n.contains("null"));
    assert!(n.contains("fromRequires"));
    assert!(!n.contains("Egress"));
}
