//! A bounded fuzz run inside `cargo test`: random bytes, YAML-ish token soup
//! and mutated real manifests (every corpus and acceptance file) go through
//! the parser and validator. Nothing may panic, every run must finish
//! quickly, and every error must be located.
//!
//! The unbounded version is the cargo-fuzz harness in `fuzz/`. Set
//! `PALISADE_FUZZ_CASES` to run more (or fewer) cases per strategy here.

mod common;

use palisade_policy::manifest::{Object, Options, parse_file, to_yaml};
use palisade_policy::testspec::parse_tests;
use proptest::prelude::*;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

/// A generous bound for one input (debug build, loaded machine). Real
/// manifests take about a millisecond.
const LIMIT: Duration = Duration::from_secs(10);

fn cases(default: u32) -> u32 {
    std::env::var("PALISADE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn manifests() -> &'static [(String, String)] {
    static M: OnceLock<Vec<(String, String)>> = OnceLock::new();
    M.get_or_init(|| {
        common::all_manifests()
            .into_iter()
            .filter(|(p, _)| p.file_name().is_none_or(|n| n != "tests.yaml"))
            .map(|(p, t)| (p.display().to_string(), t))
            .collect()
    })
}

fn tests_files() -> &'static [(String, String)] {
    static T: OnceLock<Vec<(String, String)>> = OnceLock::new();
    T.get_or_init(|| {
        common::all_manifests()
            .into_iter()
            .filter(|(p, _)| p.file_name().is_some_and(|n| n == "tests.yaml"))
            .map(|(p, t)| (p.display().to_string(), t))
            .collect()
    })
}

/// Everything the parser offers for one input: both option sets, the
/// error texts, and the `policy get` renderings of what decoded.
fn exercise(text: &str) -> Result<(), String> {
    let all_on = Options {
        enable_node_selector_labels: true,
        enable_extended_ip_protocols: true,
    };
    exercise_with(text, &[Options::default(), all_on])
}

fn exercise_with(text: &str, options: &[Options]) -> Result<(), String> {
    for opts in options {
        for doc in parse_file("fuzz.yaml", text, opts) {
            for e in &doc.errors {
                if e.file != "fuzz.yaml" || e.line == 0 || e.column == 0 || e.message.is_empty() {
                    return Err(format!("badly located error: {e:?}"));
                }
                let _ = e.to_string();
            }
            if !doc.errors.is_empty() && doc.object.is_some() {
                return Err(format!("a document with errors still decoded: {doc:?}"));
            }
            if let Some(Object::Policy(p)) = &doc.object {
                let v = serde_json::to_value(p).map_err(|e| e.to_string())?;
                let _ = to_yaml(&v);
            }
        }
    }
    Ok(())
}

/// Runs `f` on its own thread: a panic or a hang becomes a test failure
/// that shows the input.
fn bounded(what: &str, text: String, f: fn(&str) -> Result<(), String>) {
    // Failure messages show the input, cut down to a readable size.
    let shown = if text.len() > 2_000 {
        let mut cut = 2_000;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{:?}... ({} bytes)", &text[..cut], text.len())
    } else {
        format!("{text:?}")
    };
    let (tx, rx) = mpsc::channel();
    let input = text.clone();
    // 2 MiB: the default for spawned threads (tokio workers, test threads).
    // Deeply nested input once overflowed it (serde-saphyr's default depth
    // budget of 64 was too deep for debug-build frames).
    let spawned = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let r = f(&input);
            let _ = tx.send(r);
        });
    let handle = match spawned {
        Ok(h) => h,
        Err(e) => panic!("cannot spawn a thread: {e}"),
    };
    match rx.recv_timeout(LIMIT) {
        Ok(Ok(())) => {
            let _ = handle.join();
        }
        Ok(Err(e)) => panic!("{what}: {e}\ninput: {shown}"),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: no result within {LIMIT:?} (a hang?)\ninput: {shown}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let msg = match handle.join() {
                Err(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default(),
                Ok(()) => String::new(),
            };
            panic!("{what}: panicked: {msg}\ninput: {shown}")
        }
    }
}

fn check_manifest(text: String) {
    bounded("parse_file", text, exercise);
}

fn check_tests_file(text: String) {
    bounded("parse_tests", text, |t| {
        if let Err(errs) = parse_tests("tests.yaml", t) {
            for e in errs {
                if e.line == 0 || e.column == 0 {
                    return Err(format!("badly located error: {e:?}"));
                }
            }
        }
        Ok(())
    });
}

const TOKENS: &[&str] = &[
    ":",
    ": ",
    "- ",
    "-",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\n",
    "\n",
    "\n",
    "  ",
    "    ",
    "\t",
    "&a ",
    "*a",
    "!!str ",
    "!!map ",
    "!!binary ",
    "!custom ",
    "|",
    "|-",
    ">",
    "'",
    "\"",
    "\\",
    "#",
    "---",
    "...",
    "? ",
    "<<: ",
    "%YAML 1.2\n",
    "%TAG ! tag:x,2000:\n",
    "null",
    "~",
    "true",
    "no",
    "y",
    "0",
    "-1",
    "0x1F",
    "0o17",
    "1e400",
    "-.inf",
    ".nan",
    "99999999999999999999999",
    "18446744073709551616",
    "\"80\"",
    "'53'",
    "\u{feff}",
    "\u{0}",
    "é",
    "\r\n",
    "apiVersion",
    "cilium.io/v2",
    "networking.k8s.io/v1",
    "v1",
    "kind",
    "CiliumNetworkPolicy",
    "CiliumClusterwideNetworkPolicy",
    "NetworkPolicy",
    "List",
    "items",
    "metadata",
    "name",
    "namespace",
    "spec",
    "specs",
    "endpointSelector",
    "nodeSelector",
    "podSelector",
    "matchLabels",
    "matchExpressions",
    "key",
    "operator",
    "In",
    "Exists",
    "values",
    "ingress",
    "egress",
    "ingressDeny",
    "egressDeny",
    "fromEndpoints",
    "toEndpoints",
    "fromCIDR",
    "toCIDRSet",
    "cidr",
    "except",
    "10.0.0.0/8",
    "::/0",
    "toEntities",
    "world",
    "toFQDNs",
    "matchName",
    "matchPattern",
    "*.",
    "**.",
    "toServices",
    "k8sService",
    "toPorts",
    "ports",
    "port",
    "endPort",
    "protocol",
    "TCP",
    "ANY",
    "rules",
    "http",
    "method",
    "path",
    "(",
    ")",
    "headers",
    "headerMatches",
    "kafka",
    "role",
    "apiKey",
    "dns",
    "icmps",
    "fields",
    "type",
    "family",
    "EchoRequest",
    "listener",
    "serverNames",
    "enableDefaultDeny",
    "log",
    "value",
    "from",
    "to",
    "ipBlock",
    "policyTypes",
    "tests",
    "expect",
    "allowed",
];

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..80).prop_map(|t| t.concat())
}

/// One edit of a manifest's lines.
#[derive(Clone, Debug)]
enum Mutation {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Indent(usize, u8),
    Dedent(usize, u8),
    /// Replace the value after the first `: ` (or the whole line) by a token.
    ReplaceScalar(usize, &'static str),
    Insert(usize, &'static str),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let line = any::<usize>();
    prop_oneof![
        line.prop_map(Mutation::Delete),
        line.prop_map(Mutation::Duplicate),
        (line, line).prop_map(|(a, b)| Mutation::Swap(a, b)),
        (line, 1u8..6).prop_map(|(a, n)| Mutation::Indent(a, n)),
        (line, 1u8..6).prop_map(|(a, n)| Mutation::Dedent(a, n)),
        (line, prop::sample::select(TOKENS)).prop_map(|(a, t)| Mutation::ReplaceScalar(a, t)),
        (line, prop::sample::select(TOKENS)).prop_map(|(a, t)| Mutation::Insert(a, t)),
        line.prop_map(Mutation::Truncate),
    ]
}

fn mutate(text: &str, muts: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for m in muts {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let n = lines.len();
        match m {
            Mutation::Delete(i) => {
                lines.remove(i % n);
            }
            Mutation::Duplicate(i) => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Mutation::Swap(a, b) => lines.swap(a % n, b % n),
            Mutation::Indent(i, k) => {
                lines[i % n].insert_str(0, &" ".repeat(usize::from(*k)));
            }
            Mutation::Dedent(i, k) => {
                let l = &mut lines[i % n];
                let spaces = l.len() - l.trim_start_matches(' ').len();
                l.drain(..spaces.min(usize::from(*k)));
            }
            Mutation::ReplaceScalar(i, t) => {
                let l = &mut lines[i % n];
                match l.find(": ") {
                    Some(p) => l.replace_range(p + 2.., t),
                    None => *l = t.to_string(),
                }
            }
            Mutation::Insert(i, t) => lines.insert(i % (n + 1), t.to_string()),
            Mutation::Truncate(i) => {
                // Cut the text at a character boundary.
                let joined = lines.join("\n");
                let mut cut = i % (joined.len() + 1);
                while !joined.is_char_boundary(cut) {
                    cut -= 1;
                }
                lines = joined[..cut].lines().map(str::to_string).collect();
            }
        }
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(300),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        check_manifest(String::from_utf8_lossy(&bytes).into_owned());
    }

    #[test]
    fn token_soup_never_panics(text in token_soup()) {
        check_manifest(text);
    }

    #[test]
    fn mutated_manifests_never_panic(
        pick in any::<prop::sample::Index>(),
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let (_, text) = pick.get(manifests());
        check_manifest(mutate(text, &muts));
    }

    #[test]
    fn mutated_tests_files_never_panic(
        pick in any::<prop::sample::Index>(),
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let (_, text) = pick.get(tests_files());
        check_tests_file(mutate(text, &muts));
    }
}

/// Every manifest, unmutated and with single lines deleted in turn (a
/// deterministic sweep over the commonest edit slip).
#[test]
fn every_manifest_survives_each_line_deleted() {
    let all = manifests();
    assert!(
        all.len() > 150,
        "the corpus and acceptance manifests are found"
    );
    for (_, text) in all {
        check_manifest(text.clone());
        let n = text.lines().count();
        // At most 8 deletions per file, spread over it, with default options
        // only: the sweep stays quick in debug builds (the property tests
        // above delete anywhere).
        let step = n.div_ceil(8).max(1);
        for i in (0..n).step_by(step) {
            bounded("parse_file", mutate(text, &[Mutation::Delete(i)]), |t| {
                exercise_with(t, &[Options::default()])
            });
        }
    }
}

/// Inputs that stress the YAML layer: each must fail (or pass) quickly.
#[test]
fn pathological_yaml_is_bounded() {
    // Billion laughs: nested aliases that expand exponentially.
    let mut laughs = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..12 {
        let p = i - 1;
        laughs.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    check_manifest(laughs);
    // Deep nesting, flow and block.
    check_manifest("[".repeat(100_000));
    check_manifest("{a: ".repeat(10_000));
    let mut deep = String::new();
    for i in 0..5_000 {
        deep.push_str(&" ".repeat(i));
        deep.push_str("a:\n");
    }
    check_manifest(deep);
    check_manifest("- ".repeat(20_000));
    // Many documents, long scalars, long keys.
    check_manifest("---\n".repeat(5_000));
    check_manifest(format!("kind: \"{}\"\n", "x".repeat(1_000_000)));
    check_manifest(format!("{}: 1\n", "k".repeat(100_000)));
    // A huge list of rules.
    let rule = "{\"endpointSelector\": {}, \"ingress\": [{\"fromEntities\": [\"world\"]}]}";
    check_manifest(format!("[{}]", vec![rule; 5_000].join(",")));
    // Merge keys and anchors in a real policy.
    check_manifest(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: m}\nspec:\n  endpointSelector: &s {matchLabels: {app: a}}\n  ingress:\n  - fromEndpoints: [*s, {<<: *s}]\n"
            .into(),
    );
}

/// Regression: nesting past the depth budget is an error, not a stack
/// overflow, on a 2 MiB stack; nesting up to the budget still parses.
#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    use palisade_policy::node::{MAX_DEPTH, parse_documents};
    fn nested(depth: usize) -> String {
        let mut out = String::new();
        for i in 0..depth {
            out.push_str(&" ".repeat(2 * i));
            out.push_str(if i % 2 == 0 { "k:\n" } else { "- \n" });
        }
        out.push_str(&" ".repeat(2 * depth));
        out.push_str("x\n");
        out
    }
    bounded("deep", nested(MAX_DEPTH - 1), |t| {
        parse_documents(t).map(|_| ()).map_err(|e| format!("{e:?}"))
    });
    bounded(
        "too deep",
        nested(MAX_DEPTH + 5),
        |t| match parse_documents(t) {
            Err(e) if e.message.contains("deeper than") => Ok(()),
            other => Err(format!("expected a depth error, got {other:?}")),
        },
    );
    check_manifest("- ".repeat(20_000));
    check_manifest("[".repeat(20_000));
}

#[test]
fn mutate_edits_lines() {
    let t = "a: 1\nb: 2\nc: 3";
    assert_eq!(mutate(t, &[Mutation::Delete(1)]), "a: 1\nc: 3");
    assert_eq!(mutate(t, &[Mutation::Swap(0, 2)]), "c: 3\nb: 2\na: 1");
    assert_eq!(
        mutate(t, &[Mutation::ReplaceScalar(0, "x")]),
        "a: x\nb: 2\nc: 3"
    );
    assert_eq!(mutate(t, &[Mutation::Indent(4, 2)]), "a: 1\n  b: 2\nc: 3");
    assert_eq!(mutate(t, &[Mutation::Truncate(3)]), "a: ");
}
