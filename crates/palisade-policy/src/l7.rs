//! L7 rules and their matchers: HTTP (method, path, host as anchored RE2
//! regexes, headers, headerMatches), Kafka (role/apiKey, apiVersion,
//! clientID, topic) and DNS (matchName/matchPattern). The proxy and `trace`
//! both decide with these functions.

use crate::fqdn::NameMatcher;
use regex::Regex;
use serde::Serialize;
use std::sync::Arc;

/// An anchored, whole-string regex (RE2 semantics) with its source text.
#[derive(Clone, Debug)]
pub struct FullRegex {
    pub source: String,
    regex: Arc<Regex>,
}

impl FullRegex {
    pub fn new(source: &str) -> Result<FullRegex, String> {
        let regex = Regex::new(&format!("^(?:{source})$")).map_err(|e| {
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
        if !self.headers.iter().all(|h| h.matches(req)) {
            return false;
        }
        self.header_matches
            .iter()
            .all(|h| h.mismatch.is_some() || h.matches(req))
    }
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

    #[test]
    fn invalid_regex_is_reported() {
        let err = FullRegex::new("/api/(v1").expect_err("unbalanced");
        assert!(err.contains("regex"), "{err}");
    }
}
