//! L7 rules and their matchers: HTTP (method, path, host as anchored RE2
//! regexes, headers, headerMatches), Kafka (role/apiKey, apiVersion,
//! clientID, topic) and DNS (matchName/matchPattern). The proxy and `trace`
//! both decide with these functions.

use crate::fqdn::NameMatcher;
use regex::{Regex, RegexSet};
use serde::Serialize;
use std::sync::{Arc, OnceLock};

/// An anchored, whole-string regex (RE2 semantics) with its source text.
#[derive(Clone, Debug)]
pub struct FullRegex {
    pub source: String,
    regex: Arc<Regex>,
}

impl FullRegex {
    pub fn new(source: &str) -> Result<FullRegex, String> {
        let regex = Regex::new(&anchored(source)).map_err(|e| {
            // The regex crate's message spans lines; keep its summary.
            let text = e.to_string();
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .trim_start_matches("error: ")
                .to_string();
            format!("invalid regex \"{source}\": {last}")
        })?;
        Ok(FullRegex {
            source: source.to_string(),
            regex: Arc::new(regex),
        })
    }
    pub fn is_match(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }
}

impl Serialize for FullRegex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl PartialEq for FullRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// What to do when a `headerMatches` entry does not match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MismatchAction {
    LOG,
    ADD,
    DELETE,
    REPLACE,
}

impl MismatchAction {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "LOG" => MismatchAction::LOG,
            "ADD" => MismatchAction::ADD,
            "DELETE" => MismatchAction::DELETE,
            "REPLACE" => MismatchAction::REPLACE,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    pub name: String,
    /// Exact value; `None` means the header only has to be present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<MismatchAction>,
    /// The value comes from a secret Palisade cannot read: never matches.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// One `http[]` rule. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<FullRegex>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<FullRegex>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<FullRegex>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub header_matches: Vec<HeaderMatch>,
}

/// An HTTP request as the matcher sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HttpRequest {
    pub method: String,
    /// The request target (`:path`), query string included.
    pub path: String,
    /// The authority (`Host` / `:authority`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl HeaderMatch {
    fn matches(&self, req: &HttpRequest) -> bool {
        if self.secret && self.value.is_none() {
            return false;
        }
        if self.name.eq_ignore_ascii_case("host") || self.name.eq_ignore_ascii_case(":authority") {
            let host = req.host.as_deref();
            return match &self.value {
                None => host.is_some(),
                Some(v) => host == Some(v.as_str()),
            };
        }
        let mut values = req.header(&self.name).peekable();
        match &self.value {
            None => values.peek().is_some(),
            Some(v) => values.any(|x| x == v),
        }
    }
}

impl HttpRule {
    /// Whether the request satisfies this rule. Header matches with a
    /// mismatch action do not deny: the proxy logs or rewrites instead.
    pub fn matches(&self, req: &HttpRequest) -> bool {
        if let Some(m) = &self.method
            && !m.is_match(&req.method)
        {
            return false;
        }
        if let Some(p) = &self.path
            && !p.is_match(&req.path)
        {
            return false;
        }
        if let Some(h) = &self.host
            && !req.host.as_deref().is_some_and(|host| h.is_match(host))
        {
            return false;
        }
        self.headers_match(req)
    }

    /// The header part of [`HttpRule::matches`]: `headers`, and the
    /// `headerMatches` entries without a mismatch action.
    fn headers_match(&self, req: &HttpRequest) -> bool {
        if !self.headers.iter().all(|h| h.matches(req)) {
            return false;
        }
        self.header_matches
            .iter()
            .all(|h| h.mismatch.is_some() || h.matches(req))
    }
}

/// The `http[]` rules of one port rule, with a matcher over all of them
/// compiled once, on first use (or [`HttpRules::prepare`]) and shared by
/// every clone made after that.
///
/// The matcher finds the rules a request can match in one pass per field:
/// a `RegexSet` over the distinct methods, one over the distinct paths and
/// one over the distinct hosts (each pattern anchored exactly as
/// [`FullRegex`] anchors it), intersected as bitsets. Only those candidates
/// have their headers checked. The result is, by construction, the set of
/// rules for which [`HttpRule::matches`] holds; a list too short to gain
/// from it, or whose sets exceed the regex size limits, is scanned rule by
/// rule instead.
#[derive(Clone, Default)]
pub struct HttpRules {
    rules: Vec<HttpRule>,
    /// Some rule has a `headerMatches` entry with a mismatch action.
    mismatch_actions: bool,
    index: OnceLock<Option<Arc<HttpIndex>>>,
}

/// Below this many rules a list is scanned rule by rule.
const INDEX_MIN_RULES: usize = 4;

impl HttpRules {
    pub fn new(rules: Vec<HttpRule>) -> Self {
        let mismatch_actions = rules
            .iter()
            .any(|r| r.header_matches.iter().any(|h| h.mismatch.is_some()));
        HttpRules {
            rules,
            mismatch_actions,
            index: OnceLock::new(),
        }
    }

    pub fn rules(&self) -> &[HttpRule] {
        &self.rules
    }

    /// Whether some rule has a `headerMatches` entry with a mismatch action
    /// (a request it admits may need its headers logged or rewritten).
    pub fn has_mismatch_actions(&self) -> bool {
        self.mismatch_actions
    }

    /// Compiles the matcher now (it is otherwise compiled by the first
    /// request), so that no request pays for it.
    pub fn prepare(&self) {
        let _ = self.index();
    }

    fn index(&self) -> Option<&HttpIndex> {
        self.index
            .get_or_init(|| HttpIndex::build(&self.rules).map(Arc::new))
            .as_deref()
    }

    /// Whether some rule admits the request (false for an empty list; an
    /// empty `http: []` allowing everything is the caller's rule).
    pub fn any_match(&self, req: &HttpRequest) -> bool {
        match self.index() {
            None => self.rules.iter().any(|r| r.matches(req)),
            Some(ix) => {
                let candidates = ix.candidates(req);
                Bits::ones(&candidates).any(|i| self.rules[i].headers_match(req))
            }
        }
    }

    /// Every rule that admits the request, in list order.
    pub fn matching<'a>(&'a self, req: &'a HttpRequest) -> impl Iterator<Item = &'a HttpRule> {
        let candidates = self.index().map(|ix| ix.candidates(req));
        self.rules
            .iter()
            .enumerate()
            .filter(move |(i, r)| match &candidates {
                None => r.matches(req),
                Some(c) => Bits::get(c, *i) && r.headers_match(req),
            })
            .map(|(_, r)| r)
    }
}

impl From<Vec<HttpRule>> for HttpRules {
    fn from(rules: Vec<HttpRule>) -> Self {
        HttpRules::new(rules)
    }
}

impl FromIterator<HttpRule> for HttpRules {
    fn from_iter<I: IntoIterator<Item = HttpRule>>(iter: I) -> Self {
        HttpRules::new(iter.into_iter().collect())
    }
}

impl std::ops::Deref for HttpRules {
    type Target = [HttpRule];
    fn deref(&self) -> &[HttpRule] {
        &self.rules
    }
}

impl std::fmt::Debug for HttpRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.rules.fmt(f)
    }
}

impl PartialEq for HttpRules {
    fn eq(&self, other: &Self) -> bool {
        self.rules == other.rules
    }
}

impl Serialize for HttpRules {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.rules.serialize(s)
    }
}

/// Bitsets over rule indices, as `u64` words.
struct Bits;

impl Bits {
    fn get(bits: &[u64], i: usize) -> bool {
        bits[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(bits: &mut [u64], i: usize) {
        bits[i / 64] |= 1 << (i % 64);
    }
    fn ones(bits: &[u64]) -> impl Iterator<Item = usize> + '_ {
        bits.iter().enumerate().flat_map(|(w, &word)| {
            let mut word = word;
            std::iter::from_fn(move || {
                (word != 0).then(|| {
                    let b = word.trailing_zeros() as usize;
                    word &= word - 1;
                    w * 64 + b
                })
            })
        })
    }
}

/// The compiled matcher of an [`HttpRules`] list.
struct HttpIndex {
    /// Rules in the list.
    len: usize,
    method: FieldIndex,
    path: FieldIndex,
    host: FieldIndex,
}

/// One field (method, path or host) of every rule.
struct FieldIndex {
    /// The distinct patterns, anchored; `None` when no rule constrains
    /// the field.
    set: Option<RegexSet>,
    /// The rules of each pattern of `set`.
    rules: Vec<Members>,
    /// The rules that do not constrain the field.
    free: Vec<u64>,
}

impl HttpIndex {
    fn build(rules: &[HttpRule]) -> Option<HttpIndex> {
        if rules.len() < INDEX_MIN_RULES {
            return None;
        }
        Some(HttpIndex {
            len: rules.len(),
            method: FieldIndex::build(rules, |r| r.method.as_ref())?,
            path: FieldIndex::build(rules, |r| r.path.as_ref())?,
            host: FieldIndex::build(rules, |r| r.host.as_ref())?,
        })
    }

    /// The rules whose method, path and host match the request.
    fn candidates(&self, req: &HttpRequest) -> Vec<u64> {
        let words = self.len.div_ceil(64);
        let mut bits = vec![u64::MAX; words];
        if let Some(last) = bits.last_mut()
            && !self.len.is_multiple_of(64)
        {
            *last = (1 << (self.len % 64)) - 1;
        }
        for (field, value) in [
            (&self.path, Some(req.path.as_str())),
            (&self.method, Some(req.method.as_str())),
            (&self.host, req.host.as_deref()),
        ] {
            if !field.restrict(&mut bits, value) {
                break;
            }
        }
        bits
    }
}

impl FieldIndex {
    /// `None` when the set cannot be compiled within the regex crate's
    /// size limits (the list is then scanned rule by rule).
    fn build(rules: &[HttpRule], field: impl Fn(&HttpRule) -> Option<&FullRegex>) -> Option<Self> {
        let words = rules.len().div_ceil(64);
        let mut free = vec![0u64; words];
        let mut patterns: Vec<String> = Vec::new();
        let mut by_source: std::collections::HashMap<&str, usize> = Default::default();
        let mut pattern_rules: Vec<Vec<usize>> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            match field(r) {
                None => Bits::set(&mut free, i),
                Some(re) => {
                    let p = *by_source.entry(re.source.as_str()).or_insert_with(|| {
                        patterns.push(anchored(&re.source));
                        pattern_rules.push(Vec::new());
                        patterns.len() - 1
                    });
                    pattern_rules[p].push(i);
                }
            }
        }
        let set = if patterns.is_empty() {
            None
        } else {
            Some(RegexSet::new(&patterns).ok()?)
        };
        let rules = pattern_rules
            .into_iter()
            .map(|list| {
                if list.len() <= words {
                    Members::Sparse(list)
                } else {
                    let mut dense = vec![0u64; words];
                    for i in list {
                        Bits::set(&mut dense, i);
                    }
                    Members::Dense(dense)
                }
            })
            .collect();
        Some(FieldIndex { set, rules, free })
    }

    /// Keeps in `bits` the rules this field admits for `value` (a missing
    /// host admits only the rules without a host). False when none is left.
    fn restrict(&self, bits: &mut [u64], value: Option<&str>) -> bool {
        let Some(set) = &self.set else {
            return true;
        };
        let mut pass = self.free.clone();
        if let Some(v) = value {
            for p in set.matches(v).iter() {
                match &self.rules[p] {
                    Members::Sparse(list) => {
                        for &i in list {
                            Bits::set(&mut pass, i);
                        }
                    }
                    Members::Dense(dense) => {
                        for (a, b) in pass.iter_mut().zip(dense) {
                            *a |= b;
                        }
                    }
                }
            }
        }
        let mut any = false;
        for (b, p) in bits.iter_mut().zip(pass) {
            *b &= p;
            any |= *b != 0;
        }
        any
    }
}

/// The rules that share one pattern: a list, or a bitset when that is
/// cheaper to merge (more rules than bitset words).
enum Members {
    Sparse(Vec<usize>),
    Dense(Vec<u64>),
}

/// The whole-string form of a pattern, as [`FullRegex::new`] compiles it.
fn anchored(source: &str) -> String {
    format!("^(?:{source})$")
}

/// Kafka API keys by the names policies use.
pub const KAFKA_API_KEYS: &[(&str, i16)] = &[
    ("produce", 0),
    ("fetch", 1),
    ("offsets", 2),
    ("metadata", 3),
    ("leaderandisr", 4),
    ("stopreplica", 5),
    ("updatemetadata", 6),
    ("controlledshutdown", 7),
    ("offsetcommit", 8),
    ("offsetfetch", 9),
    ("findcoordinator", 10),
    ("joingroup", 11),
    ("heartbeat", 12),
    ("leavegroup", 13),
    ("syncgroup", 14),
    ("describegroups", 15),
    ("listgroups", 16),
    ("saslhandshake", 17),
    ("apiversions", 18),
    ("createtopics", 19),
    ("deletetopics", 20),
    ("deleterecords", 21),
    ("initproducerid", 22),
    ("offsetforleaderepoch", 23),
    ("addpartitionstotxn", 24),
    ("addoffsetstotxn", 25),
    ("endtxn", 26),
    ("writetxnmarkers", 27),
    ("txnoffsetcommit", 28),
    ("describeacls", 29),
    ("createacls", 30),
    ("deleteacls", 31),
    ("describeconfigs", 32),
    ("alterconfigs", 33),
];

pub fn kafka_api_key(name: &str) -> Option<i16> {
    let lower = name.to_ascii_lowercase();
    KAFKA_API_KEYS
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|(_, k)| *k)
        .or_else(|| name.parse::<i16>().ok().filter(|k| (0..=33).contains(k)))
}

pub fn kafka_api_key_name(key: i16) -> Option<&'static str> {
    KAFKA_API_KEYS
        .iter()
        .find(|(_, k)| *k == key)
        .map(|(n, _)| *n)
}

/// The API keys a role stands for (Cilium's kafka roles).
pub fn kafka_role_keys(role: &str) -> Option<&'static [i16]> {
    match role {
        "produce" => Some(&[0, 3, 18]),
        "consume" => Some(&[1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18]),
        _ => None,
    }
}

/// One `kafka[]` rule. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The API keys this rule allows; empty means all.
    #[serde(skip)]
    pub api_keys: Vec<i16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<i16>,
    #[serde(rename = "clientID", skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// A Kafka request as the matcher sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KafkaRequest {
    pub api_key: i16,
    pub api_version: i16,
    pub client_id: String,
    /// Every topic the request names (empty for APIs without topics).
    pub topics: Vec<String>,
}

impl KafkaRule {
    pub fn matches(&self, req: &KafkaRequest) -> bool {
        if !self.api_keys.is_empty() && !self.api_keys.contains(&req.api_key) {
            return false;
        }
        if let Some(v) = self.api_version
            && v != req.api_version
        {
            return false;
        }
        if let Some(c) = &self.client_id
            && c != &req.client_id
        {
            return false;
        }
        match &self.topic {
            None => true,
            // A request that carries no topic cannot violate a topic
            // constraint (heartbeat, apiversions, ...).
            Some(t) => req.topics.iter().all(|x| x == t),
        }
    }
}

/// One `dns[]` rule.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
    #[serde(skip)]
    pub matcher: NameMatcher,
}

impl DnsRule {
    pub fn matches(&self, query: &str) -> bool {
        self.matcher.matches(query)
    }
    /// The explicit wildcard Cilium adds when merging with an L3/L4 allow.
    pub fn wildcard() -> DnsRule {
        DnsRule {
            match_name: None,
            match_pattern: Some("*".into()),
            matcher: NameMatcher::pattern("*").unwrap_or_default(),
        }
    }
}

/// An L7 request of any supported protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum L7Request {
    Http(HttpRequest),
    Kafka(KafkaRequest),
    Dns { query: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            method: method.into(),
            path: path.into(),
            host: None,
            headers: headers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    #[test]
    fn http_paths_are_whole_matches() {
        let rule = HttpRule {
            method: Some(FullRegex::new("GET").expect("re")),
            path: Some(FullRegex::new("/path1$").expect("re")),
            ..Default::default()
        };
        assert!(rule.matches(&req("GET", "/path1", &[])));
        assert!(!rule.matches(&req("GET", "/path1/x", &[])));
        assert!(!rule.matches(&req("POST", "/path1", &[])));
    }

    #[test]
    fn headers_exact_and_presence() {
        let rule = HttpRule {
            headers: vec![HeaderMatch {
                name: "X-My-Header".into(),
                value: Some("true".into()),
                mismatch: None,
                secret: false,
            }],
            ..Default::default()
        };
        assert!(rule.matches(&req("PUT", "/", &[("x-my-header", "true")])));
        assert!(!rule.matches(&req("PUT", "/", &[("x-my-header", "false")])));
        assert!(!rule.matches(&req("PUT", "/", &[])));
    }

    fn rule(method: Option<&str>, path: Option<&str>, host: Option<&str>) -> HttpRule {
        let re = |s: Option<&str>| s.map(|s| FullRegex::new(s).expect("re"));
        HttpRule {
            method: re(method),
            path: re(path),
            host: re(host),
            ..Default::default()
        }
    }

    /// The rules `bench/l7-proxy.sh` and `benches/l7.rs` use.
    fn bench_rules(n: usize) -> HttpRules {
        let mut rules: Vec<HttpRule> = (1..n)
            .map(|i| HttpRule {
                headers: vec![HeaderMatch {
                    name: "X-Tenant".into(),
                    value: Some(format!("t{i}")),
                    mismatch: None,
                    secret: false,
                }],
                ..rule(
                    Some("GET"),
                    Some(&format!("/api/v1/resource-{i}/[0-9]+")),
                    None,
                )
            })
            .collect();
        rules.push(rule(Some("GET"), Some("/bench"), None));
        HttpRules::new(rules)
    }

    #[test]
    fn indexed_rules_match_like_the_scan() {
        let rules = bench_rules(1000);
        rules.prepare();
        assert!(rules.index().is_some(), "1,000 rules are indexed");
        let cases = [
            (req("GET", "/bench", &[]), Some(999)),
            (req("GET", "/bench/", &[]), None),
            (req("POST", "/bench", &[]), None),
            (
                req("GET", "/api/v1/resource-500/42", &[("x-tenant", "t500")]),
                Some(499),
            ),
            (
                req("GET", "/api/v1/resource-500/42", &[("x-tenant", "t501")]),
                None,
            ),
            (req("GET", "/api/v1/resource-500/42", &[]), None),
            (
                req("GET", "/api/v1/resource-500/4x", &[("x-tenant", "t500")]),
                None,
            ),
            (
                req("GET", "/api/v1/resource-64/1", &[("X-TENANT", "t64")]),
                Some(63),
            ),
        ];
        for (r, want) in cases {
            let got: Vec<usize> = rules
                .matching(&r)
                .map(|m| rules.iter().position(|x| std::ptr::eq(x, m)).expect("in"))
                .collect();
            assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "{r:?}");
            assert_eq!(rules.any_match(&r), want.is_some(), "{r:?}");
        }
    }

    #[test]
    fn a_missing_host_admits_only_rules_without_one() {
        let rules = HttpRules::new(vec![
            rule(None, Some("/a"), Some("example\\.com")),
            rule(None, Some("/b"), Some(".*")),
            rule(None, Some("/c"), None),
            rule(Some("GET"), None, Some("h[0-9]")),
        ]);
        assert!(rules.index().is_some());
        assert!(!rules.any_match(&req("GET", "/a", &[])));
        assert!(!rules.any_match(&req("GET", "/b", &[])));
        assert!(rules.any_match(&req("GET", "/c", &[])));
        let mut with_host = req("GET", "/b", &[]);
        with_host.host = Some("anything".into());
        assert!(rules.any_match(&with_host));
        with_host.host = Some("h7".into());
        with_host.path = "/zzz".into();
        assert!(rules.any_match(&with_host));
    }

    #[test]
    fn patterns_are_anchored_as_a_whole() {
        // An alternation must not escape the anchors (`^/a|/b$`).
        let rules = HttpRules::new(
            ["/a|/b", "/c", "/d", "/e"]
                .iter()
                .map(|p| rule(None, Some(p), None))
                .collect(),
        );
        assert!(rules.index().is_some());
        assert!(rules.any_match(&req("GET", "/a", &[])));
        assert!(rules.any_match(&req("GET", "/b", &[])));
        assert!(!rules.any_match(&req("GET", "/a/x", &[])));
        assert!(!rules.any_match(&req("GET", "x/b", &[])));
    }

    mod equivalence {
        //! The indexed matcher against the plain scan of `HttpRule::matches`
        //! on random rule lists (crossing the index threshold and bitset
        //! word boundaries) and random requests.
        use super::super::*;
        use proptest::prelude::*;
        use std::sync::LazyLock;

        const METHODS: &[&str] = &["GET", "POST", "GET|POST", "P.*", "[A-Z]+", "get", "(?i)get"];
        const PATHS: &[&str] = &[
            "/",
            "/a",
            "/a/.*",
            "/a/[0-9]+",
            "/b",
            ".*",
            "/a/1",
            "/(a|b)/x",
            "/a$",
            "^/b",
            "/a|/b",
            "/[^/]*",
            "",
        ];
        const HOSTS: &[&str] = &["example\\.com", ".*\\.com", "h[0-9]", "h1", ".*"];
        const HEADER_NAMES: &[&str] = &["x-a", "X-A", "x-b", "host", ":authority"];
        const VALUES: &[&str] = &["1", "2", "example.com", "h1"];

        const REQ_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "get", ""];
        const REQ_PATHS: &[&str] = &[
            "/", "/a", "/a/1", "/a/x", "/b", "/b/x", "", "/a/1/2", "x/b", "/a\nb",
        ];
        const REQ_HOSTS: &[&str] = &["example.com", "h1", "h2", "foo.org", ""];

        fn compiled(sources: &[&str]) -> Vec<FullRegex> {
            sources
                .iter()
                .map(|s| FullRegex::new(s).expect("valid"))
                .collect()
        }
        static METHOD_RE: LazyLock<Vec<FullRegex>> = LazyLock::new(|| compiled(METHODS));
        static PATH_RE: LazyLock<Vec<FullRegex>> = LazyLock::new(|| compiled(PATHS));
        static HOST_RE: LazyLock<Vec<FullRegex>> = LazyLock::new(|| compiled(HOSTS));

        fn pick(
            pool: &'static LazyLock<Vec<FullRegex>>,
        ) -> impl Strategy<Value = Option<FullRegex>> {
            prop::option::weighted(0.7, 0..pool.len()).prop_map(move |i| i.map(|i| pool[i].clone()))
        }

        fn header_match() -> impl Strategy<Value = HeaderMatch> {
            (
                0..HEADER_NAMES.len(),
                prop::option::of(0..VALUES.len()),
                prop::option::weighted(0.2, 0..4usize),
                prop::bool::weighted(0.1),
            )
                .prop_map(|(n, v, m, secret)| HeaderMatch {
                    name: HEADER_NAMES[n].into(),
                    value: v.map(|v| VALUES[v].into()),
                    mismatch: m.map(|m| {
                        [
                            MismatchAction::LOG,
                            MismatchAction::ADD,
                            MismatchAction::DELETE,
                            MismatchAction::REPLACE,
                        ][m]
                    }),
                    secret,
                })
        }

        fn http_rule() -> impl Strategy<Value = HttpRule> {
            (
                pick(&METHOD_RE),
                pick(&PATH_RE),
                prop::option::weighted(0.3, 0..HOSTS.len()),
                prop::collection::vec(header_match(), 0..2),
                prop::collection::vec(header_match(), 0..2),
            )
                .prop_map(|(method, path, host, headers, header_matches)| HttpRule {
                    method,
                    path,
                    host: host.map(|h| HOST_RE[h].clone()),
                    headers,
                    header_matches,
                })
        }

        fn request() -> impl Strategy<Value = HttpRequest> {
            (
                0..REQ_METHODS.len(),
                0..REQ_PATHS.len(),
                prop::option::of(0..REQ_HOSTS.len()),
                prop::collection::vec((0..HEADER_NAMES.len(), 0..VALUES.len()), 0..3),
            )
                .prop_map(|(m, p, h, hs)| HttpRequest {
                    method: REQ_METHODS[m].into(),
                    path: REQ_PATHS[p].into(),
                    host: h.map(|h| REQ_HOSTS[h].into()),
                    headers: hs
                        .into_iter()
                        .map(|(n, v)| (HEADER_NAMES[n].into(), VALUES[v].into()))
                        .collect(),
                })
        }

        fn rule_lists() -> impl Strategy<Value = Vec<HttpRule>> {
            prop_oneof![
                prop::collection::vec(http_rule(), 0..12),
                prop::collection::vec(http_rule(), 60..140),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn indexed_equals_scan(
                rules in rule_lists(),
                reqs in prop::collection::vec(request(), 1..24),
            ) {
                let list = HttpRules::new(rules.clone());
                prop_assert_eq!(list.index().is_some(), rules.len() >= INDEX_MIN_RULES);
                for r in &reqs {
                    let want: Vec<usize> = (0..rules.len()).filter(|&i| rules[i].matches(r)).collect();
                    let got: Vec<usize> = list
                        .matching(r)
                        .map(|m| list.iter().position(|x| std::ptr::eq(x, m)).unwrap_or(usize::MAX))
                        .collect();
                    prop_assert_eq!(&got, &want, "request {:?}", r);
                    prop_assert_eq!(list.any_match(r), !want.is_empty(), "request {:?}", r);
                }
            }
        }
    }

    #[test]
    fn invalid_regex_is_reported() {
        let err = FullRegex::new("/api/(v1").expect_err("unbalanced");
        assert!(err.contains("regex"), "{err}");
    }
}
