//! Strict decoding of positioned trees into typed values.
//!
//! Every problem becomes a [`Diagnostic`] that names the file, line, column
//! and field path; decoding goes on after an error so that one run reports
//! every error of every document.

use crate::node::{Key, Node, Pos, Value};
use serde::Serialize;
use std::fmt;

/// One validation error, located in its file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// Field path such as `spec.ingress[0].toPorts[1].ports[0].port`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.column, self.field, self.message
            )
        }
    }
}

/// Collects diagnostics for one file.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub file: &'a str,
    pub errors: Vec<Diagnostic>,
}

impl<'a> Ctx<'a> {
    pub fn new(file: &'a str) -> Self {
        Ctx {
            file,
            errors: Vec::new(),
        }
    }

    pub fn error(&mut self, pos: Pos, field: &str, message: impl Into<String>) {
        self.errors.push(Diagnostic {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// Reads a mapping and checks its keys against `allowed`. Unknown keys are
    /// errors with a "did you mean" hint. Returns `None` (after reporting)
    /// when the node is not a mapping; `null` reads as an empty mapping.
    pub fn object<'n>(&mut self, node: &'n Node, path: &str, allowed: &[&str]) -> Option<Obj<'n>> {
        let entries: &'n [(Key, Node)] = match &node.value {
            Value::Map(e) => e,
            Value::Null => &[],
            _ => {
                self.error(
                    node.pos,
                    path,
                    format!(
                        "expected an object{}, found {}",
                        for_field(path),
                        node.type_name()
                    ),
                );
                return None;
            }
        };
        for (k, _) in entries {
            if !allowed.contains(&k.name.as_str()) {
                let field = join(path, &k.name);
                let msg = unknown_field_message(&k.name, allowed);
                self.error(k.pos, &field, msg);
            }
        }
        Some(Obj {
            node,
            entries,
            path: path.to_string(),
        })
    }

    /// Reads a list; `null` reads as an empty list.
    pub fn seq<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            Value::Null => Some(&[]),
            _ => {
                self.error(
                    node.pos,
                    path,
                    format!(
                        "expected a list{}, found {}",
                        for_field(path),
                        node.type_name()
                    ),
                );
                None
            }
        }
    }

    pub fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            _ => {
                self.error(
                    node.pos,
                    path,
                    format!(
                        "expected a string{}, found {}",
                        for_field(path),
                        node.type_name()
                    ),
                );
                None
            }
        }
    }

    pub fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            _ => {
                self.error(
                    node.pos,
                    path,
                    format!(
                        "expected a boolean (true or false){}, found {}",
                        for_field(path),
                        node.type_name()
                    ),
                );
                None
            }
        }
    }

    pub fn integer(&mut self, node: &Node, path: &str) -> Option<i64> {
        match &node.value {
            Value::Int(i) => Some(*i),
            _ => {
                self.error(
                    node.pos,
                    path,
                    format!(
                        "expected an integer{}, found {}",
                        for_field(path),
                        node.type_name()
                    ),
                );
                None
            }
        }
    }

    /// Decodes every item of a list with `f` (its path is `path[i]`). All
    /// items are decoded, so every item's errors are reported; `None` when
    /// the node is not a list or any item failed.
    pub fn list<T>(
        &mut self,
        node: &Node,
        path: &str,
        mut f: impl FnMut(&mut Ctx<'a>, &Node, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let items = self.seq(node, path)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match f(self, item, &index(path, i)) {
                Some(v) => out.push(v),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A list of strings.
    pub fn strings(&mut self, node: &Node, path: &str) -> Vec<(Pos, String)> {
        let mut out = Vec::new();
        if let Some(items) = self.seq(node, path) {
            for (i, item) in items.iter().enumerate() {
                if let Some(s) = self.string(item, &index(path, i)) {
                    out.push((item.pos, s));
                }
            }
        }
        out
    }

    /// A map of string to string (labels, matchLabels, selectors).
    pub fn string_map(&mut self, node: &Node, path: &str) -> Vec<(Pos, String, String)> {
        let mut out = Vec::new();
        match &node.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    let field = join(path, &k.name);
                    let value = match &v.value {
                        Value::Str(s) => Some(s.clone()),
                        // kubectl rejects non-string label values too; say so plainly.
                        _ => {
                            self.error(
                                v.pos,
                                &field,
                                format!(
                                    "expected a string, found {} (quote the value: \"{}\")",
                                    v.type_name(),
                                    scalar_text(v)
                                ),
                            );
                            None
                        }
                    };
                    if let Some(value) = value {
                        out.push((k.pos, k.name.clone(), value));
                    }
                }
            }
            Value::Null => {}
            _ => self.error(
                node.pos,
                path,
                format!(
                    "expected an object of strings{}, found {}",
                    for_field(path),
                    node.type_name()
                ),
            ),
        }
        out
    }
}

fn scalar_text(n: &Node) -> String {
    match &n.value {
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Str(s) => s.clone(),
        _ => String::new(),
    }
}

/// " for NAME" naming the last field of a path (`spec.ingress[0]` gives
/// " for ingress[0]"), so a type error names its field even without the path.
fn for_field(path: &str) -> String {
    let leaf = path.rsplit('.').next().unwrap_or(path);
    if leaf.is_empty() {
        String::new()
    } else {
        format!(" for {leaf}")
    }
}

/// A mapping being decoded.
pub struct Obj<'n> {
    pub node: &'n Node,
    entries: &'n [(Key, Node)],
    pub path: String,
}

impl<'n> Obj<'n> {
    pub fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v)
    }

    /// Like `get`, but an explicit `null` counts as absent.
    pub fn get_some(&self, name: &str) -> Option<&'n Node> {
        self.get(name).filter(|n| !n.is_null())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get_some(name).is_some()
    }

    pub fn field(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// Position of a key (or of the mapping when absent).
    pub fn key_pos(&self, name: &str) -> Pos {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(k, _)| k.pos)
            .unwrap_or(self.node.pos)
    }
}

pub fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn unknown_field_message(name: &str, allowed: &[&str]) -> String {
    let mut msg = format!("unknown field \"{name}\"");
    if let Some(best) = did_you_mean(name, allowed) {
        msg.push_str(&format!(" (did you mean \"{best}\"?)"));
    } else {
        msg.push_str(&format!("; valid fields here: {}", allowed.join(", ")));
    }
    msg
}

/// The closest valid name, when one is close enough to be a likely typo.
pub fn did_you_mean<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    let len = lower.chars().count();
    candidates
        .iter()
        .filter_map(|c| {
            let max = 2.max(c.len() / 4);
            // The distance is at least the difference in length: skip hopeless
            // candidates (and huge garbage input) without the quadratic work.
            if len.abs_diff(c.chars().count()) > max {
                return None;
            }
            let d = edit_distance(&lower, &c.to_ascii_lowercase());
            (d <= max).then_some((d, *c))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting a swap of two neighbouring characters as one
/// edit (optimal string alignment): `prot` is one edit from `port`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows: two back (for transpositions), previous, current.
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j - 1] + cost).min(prev[j] + 1).min(cur[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(prev2[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_names() {
        assert_eq!(
            did_you_mean("fromEndpoint", &["fromEndpoints", "fromCIDR", "toPorts"]),
            Some("fromEndpoints")
        );
        assert_eq!(
            did_you_mean("HTTP", &["http", "kafka", "dns"]),
            Some("http")
        );
        assert_eq!(did_you_mean("zzzzzz", &["http", "kafka"]), None);
        // A swap of two letters is one edit: "prot" is "port", not "from".
        assert_eq!(did_you_mean("prot", &["from", "to", "port"]), Some("port"));
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        // Regression: a megabyte-long name once took seconds (quadratic work
        // against every candidate).
        let long = "x".repeat(1_000_000);
        let t = std::time::Instant::now();
        assert_eq!(did_you_mean(&long, &["CiliumNetworkPolicy", "Pod"]), None);
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }
}
