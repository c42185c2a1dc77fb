//! Helpers shared by the acceptance tests: where `shared/` is, and reading
//! its files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The shared test data (`shared/`: corpus, acceptance cases, reference).
///
/// `PALISADE_SHARED` wins; otherwise `shared/` beside the repository
/// checkout (`<repo>/../shared`, i.e. `../../../shared` from this crate).
pub fn shared_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PALISADE_SHARED") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.is_dir(),
            "PALISADE_SHARED={} is not a directory",
            dir.display()
        );
        return dir;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    assert!(
        dir.is_dir(),
        "the shared test data is missing: expected {} (shared/ beside the checkout); \
         set PALISADE_SHARED to its location",
        dir.display()
    );
    dir.canonicalize().unwrap_or(dir)
}

/// This crate's own test data directory (`tests/`).
pub fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// Every file below `dir` (recursively) whose extension is in `exts`, sorted.
pub fn files_under(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, exts, out);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e))
            {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, exts, &mut out);
    out.sort();
    out
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every manifest of the corpus and the acceptance cases (the inputs the
/// fuzzer mutates and the benchmark validates), as (path, text).
pub fn all_manifests() -> Vec<(PathBuf, String)> {
    let shared = shared_dir();
    let mut out = Vec::new();
    for dir in ["corpus", "acceptance"] {
        for p in files_under(&shared.join(dir), &["yaml", "yml", "json"]) {
            let text = read(&p);
            out.push((p, text));
        }
    }
    for p in files_under(&tests_dir().join("invalid"), &["yaml", "yml", "json"]) {
        let text = read(&p);
        out.push((p, text));
    }
    out
}

/// The `# expect-error: line N: SUBSTRING` header of an invalid case.
#[derive(Debug)]
pub struct Expectation {
    pub line: u32,
    pub substring: String,
}

pub fn parse_expectation(text: &str) -> Result<Expectation, String> {
    let first = text.lines().next().unwrap_or("");
    let rest = first
        .strip_prefix("# expect-error:")
        .ok_or_else(|| format!("first line is not `# expect-error: line N: SUBSTRING`: {first:?}"))?
        .trim_start();
    let rest = rest
        .strip_prefix("line ")
        .ok_or_else(|| format!("expected `line N:` after `# expect-error:` in {first:?}"))?;
    let (n, sub) = rest
        .split_once(':')
        .ok_or_else(|| format!("expected `line N: SUBSTRING` in {first:?}"))?;
    let line = n
        .trim()
        .parse()
        .map_err(|_| format!("bad line number {n:?} in {first:?}"))?;
    let substring = sub.trim().to_lowercase();
    if substring.is_empty() {
        return Err(format!("empty SUBSTRING in {first:?}"));
    }
    Ok(Expectation { line, substring })
}
