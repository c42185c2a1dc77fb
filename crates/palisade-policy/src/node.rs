//! A positioned document tree: every value of a manifest with the line and
//! column it was written at. YAML (and JSON, which YAML 1.2 reads too) is
//! parsed by serde-saphyr into this tree; typed decoding (`decode`) walks it,
//! so every error can name the file, line, column and field path.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

/// A 1-based line and column in a source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One value of a document, with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

/// The shapes a value can take.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key with its own position (unknown-field errors point at it).
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

impl Node {
    /// A short name of the value's type, as kubectl words it.
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "number",
            Value::Str(_) => "string",
            Value::Seq(_) => "list",
            Value::Map(_) => "object",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The value of key `name` when this node is a mapping.
    pub fn get(&self, name: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == name).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

fn pos_of(loc: &serde_saphyr::Location) -> Pos {
    Pos {
        line: u32::try_from(loc.line()).unwrap_or(u32::MAX),
        column: u32::try_from(loc.column()).unwrap_or(u32::MAX),
    }
}

/// Deserialize target without positions; positions come from the `Spanned`
/// wrapper around each child.
struct RawValue(Value);

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct SpannedNode(Node);

impl<'de> Deserialize<'de> for SpannedNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<RawValue>::deserialize(d)?;
        Ok(SpannedNode(Node {
            pos: pos_of(&s.referenced),
            value: s.value.0,
        }))
    }
}

/// Map keys are read as any scalar and kept as text (`80: x` has key "80").
struct RawKey(String);

impl<'de> Deserialize<'de> for RawKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RawValue::deserialize(d)?.0 {
            Value::Str(s) => Ok(RawKey(s)),
            Value::Int(i) => Ok(RawKey(i.to_string())),
            Value::Float(f) => Ok(RawKey(f.to_string())),
            Value::Bool(b) => Ok(RawKey(b.to_string())),
            Value::Null => Ok(RawKey(String::new())),
            _ => Err(de::Error::custom("a mapping key must be a scalar")),
        }
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<RawValue, E> {
        Ok(RawValue(Value::Null))
    }
    fn visit_none<E>(self) -> Result<RawValue, E> {
        Ok(RawValue(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawValue, D::Error> {
        RawValue::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<RawValue, E> {
        Ok(RawValue(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<RawValue, E> {
        Ok(RawValue(Value::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawValue, E> {
        i64::try_from(v)
            .map(|i| RawValue(Value::Int(i)))
            .or(Ok(RawValue(Value::Float(v as f64))))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<RawValue, E> {
        Ok(RawValue(Value::Float(v as f64)))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawValue, E> {
        Ok(RawValue(Value::Float(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<RawValue, E> {
        Ok(RawValue(Value::Float(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<RawValue, E> {
        Ok(RawValue(Value::Str(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<RawValue, E> {
        Ok(RawValue(Value::Str(v)))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<RawValue, E> {
        Ok(RawValue(Value::Str(
            String::from_utf8_lossy(v).into_owned(),
        )))
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<RawValue, D::Error> {
        RawValue::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
        let mut items = Vec::new();
        while let Some(SpannedNode(n)) = seq.next_element::<SpannedNode>()? {
            items.push(n);
        }
        Ok(RawValue(Value::Seq(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Spanned<RawKey>>()? {
            let SpannedNode(mut v) = map.next_value::<SpannedNode>()?;
            let key_pos = pos_of(&k.referenced);
            // A block collection starts on the line after its key. Errors about
            // the collection as a whole (wrong type, too long, a missing
            // member) belong where the field is written: on the key.
            if matches!(v.value, Value::Seq(_) | Value::Map(_)) && v.pos.line > key_pos.line {
                v.pos = key_pos;
            }
            entries.push((
                Key {
                    name: k.value.0,
                    pos: key_pos,
                },
                v,
            ));
        }
        Ok(RawValue(Value::Map(entries)))
    }
}

/// A syntax error: where the parser stopped and what it said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// The deepest nesting of collections a manifest may have.
pub const MAX_DEPTH: usize = 32;

/// Parses every document of a YAML (or JSON) text into positioned trees.
/// Empty documents are left out.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        // Each level of nesting costs the deserializer tens of kilobytes of
        // stack in debug builds: 64 levels (serde-saphyr's default) overflow
        // a 2 MiB thread stack. Real manifests nest about 12 deep.
        budget: serde_saphyr::budget! { max_depth: MAX_DEPTH },
        // Aliases are rare in manifests; bound their expansion (billion laughs)
        // well below the node budget so hostile input fails fast.
        alias_limits: serde_saphyr::alias_limits! { max_total_replayed_events: 20_000 },
    };
    match serde_saphyr::from_multiple_with_options::<SpannedNode>(text, options) {
        Ok(docs) => Ok(docs
            .into_iter()
            .map(|SpannedNode(n)| n)
            .filter(|n| !n.is_null())
            .collect()),
        Err(e) => {
            let pos = e
                .location()
                .map(|l| pos_of(&l))
                .unwrap_or(Pos { line: 1, column: 1 });
            let message = friendly(&first_line_of(&e.to_string()));
            Err(SyntaxError { pos, message })
        }
    }
}

/// serde-saphyr's wording for a few errors, said for policy authors.
fn friendly(message: &str) -> String {
    if message.starts_with("budget breached: Depth") {
        return format!("the document nests deeper than {MAX_DEPTH} levels");
    }
    if let Some(rest) = message.strip_prefix("budget breached: ") {
        return format!("the document is too large to read ({rest})");
    }
    // The hint about DuplicateKeyPolicy is for programmers.
    message
        .replace(", set DuplicateKeyPolicy in Options if acceptable", "")
        .replace("duplicate mapping key: ", "duplicate field ")
}

fn first_line_of(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    // Drop a leading "line N column M: " (the position is reported separately).
    match line.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => {
            rest.to_string()
        }
        _ => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let docs = parse_documents("a: 1\nb:\n  - x\n  - {c: \"80\"}\n").expect("parses");
        assert_eq!(docs.len(), 1);
        let b = docs[0].get("b").expect("b");
        let Value::Seq(items) = &b.value else {
            panic!("seq")
        };
        assert_eq!(items[0].pos, Pos { line: 3, column: 5 });
        let c = items[1].get("c").expect("c");
        assert_eq!(c.value, Value::Str("80".into()));
        assert_eq!(c.pos.line, 4);
    }

    #[test]
    fn multi_document_and_json() {
        let docs = parse_documents("---\na: 1\n---\n---\nb: true\n").expect("parses");
        assert_eq!(docs.len(), 2);
        let docs = parse_documents("[{\"x\": [1, 2]}]").expect("json");
        assert_eq!(docs.len(), 1);
    }

    #[test]
    fn syntax_error_has_line() {
        let err = parse_documents("a:\n  b: c: d\n").expect_err("bad");
        assert_eq!(err.pos.line, 2);
    }
}
