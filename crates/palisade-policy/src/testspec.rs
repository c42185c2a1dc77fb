//! Policy tests: the `tests.yaml` format a team pins its policies with, and
//! its runner.

use crate::api::Protocol;
use crate::decode::{Ctx, Diagnostic, index};
use crate::engine::Engine;
use crate::l7::{HttpRequest, KafkaRequest, L7Request, kafka_api_key};
use crate::node::{Value, parse_documents};
use crate::trace::{PeerSpec, Query, TraceResult, trace};
use serde::Serialize;

/// One test case.
#[derive(Clone, Debug, Serialize)]
pub struct TestCase {
    pub name: String,
    pub query: Query,
    pub expect_allowed: bool,
    #[serde(skip)]
    pub line: u32,
}

/// Parses a tests file; every error is reported with its position.
pub fn parse_tests(file: &str, text: &str) -> Result<Vec<TestCase>, Vec<Diagnostic>> {
    let docs = parse_documents(text).map_err(|e| {
        vec![Diagnostic {
            file: file.into(),
            line: e.pos.line,
            column: e.pos.column,
            field: String::new(),
            message: format!("invalid YAML: {}", e.message),
        }]
    })?;
    let mut ctx = Ctx::new(file);
    let mut out = Vec::new();
    for doc in &docs {
        let Some(o) = ctx.object(doc, "", &["tests"]) else {
            continue;
        };
        let Some(tests) = o.get("tests") else {
            ctx.error(
                doc.pos,
                "tests",
                "a tests file has a top-level list `tests:`",
            );
            continue;
        };
        let Some(items) = ctx.seq(tests, "tests") else {
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            if let Some(t) = parse_case(&mut ctx, item, &index("tests", i)) {
                out.push(t);
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in &out {
        if !seen.insert(t.name.clone()) {
            ctx.error(
                crate::node::Pos {
                    line: t.line,
                    column: 1,
                },
                "tests.name",
                format!(
                    "test name \"{}\" is used twice; names must be unique",
                    t.name
                ),
            );
        }
    }
    if ctx.errors.is_empty() {
        Ok(out)
    } else {
        Err(ctx.errors)
    }
}

const FIELDS: &[&str] = &[
    "name", "from", "to", "port", "protocol", "icmpType", "http", "kafka", "dns", "dnsName",
    "expect",
];

fn parse_case(ctx: &mut Ctx, item: &crate::node::Node, p: &str) -> Option<TestCase> {
    let before = ctx.errors.len();
    let o = ctx.object(item, p, FIELDS)?;
    let req = |ctx: &mut Ctx, f: &str| -> Option<String> {
        match o.get_some(f) {
            Some(n) => ctx.string(n, &o.field(f)),
            None => {
                ctx.error(item.pos, &o.field(f), format!("{f} is required"));
                None
            }
        }
    };
    let name = req(ctx, "name").unwrap_or_default();
    let peer = |ctx: &mut Ctx, f: &str| -> Option<PeerSpec> {
        let s = req(ctx, f)?;
        match PeerSpec::parse(&s) {
            Ok(p) => Some(p),
            Err(e) => {
                ctx.error(o.get(f).map_or(item.pos, |n| n.pos), &o.field(f), e);
                None
            }
        }
    };
    let mut from = peer(ctx, "from");
    let mut to = peer(ctx, "to");
    let protocol = match o.get_some("protocol") {
        None => Protocol::TCP,
        Some(n) => match ctx.string(n, &o.field("protocol")).as_deref() {
            Some("TCP") => Protocol::TCP,
            Some("UDP") => Protocol::UDP,
            Some("SCTP") => Protocol::SCTP,
            Some("ICMP") => Protocol::ICMP,
            Some(other) => {
                ctx.error(
                    n.pos,
                    &o.field("protocol"),
                    format!("unknown protocol \"{other}\"; valid: TCP, UDP, SCTP, ICMP"),
                );
                Protocol::TCP
            }
            None => Protocol::TCP,
        },
    };
    let port = if protocol == Protocol::ICMP {
        if o.has("port") {
            ctx.error(
                o.key_pos("port"),
                &o.field("port"),
                "ICMP tests take icmpType, not port",
            );
        }
        match o
            .get_some("icmpType")
            .map(|n| (n, ctx.integer(n, &o.field("icmpType"))))
        {
            Some((_, Some(t))) if (0..=255).contains(&t) => t as u16,
            Some((n, _)) => {
                ctx.error(n.pos, &o.field("icmpType"), "icmpType must be 0 to 255");
                0
            }
            None => {
                ctx.error(
                    item.pos,
                    &o.field("icmpType"),
                    "ICMP tests need icmpType (8 for echo request)",
                );
                0
            }
        }
    } else {
        match o.get_some("port") {
            Some(n) => {
                let v = match &n.value {
                    Value::Int(i) => Some(*i),
                    Value::Str(s) => s.parse::<i64>().ok(),
                    _ => None,
                };
                match v {
                    Some(v) if (0..=65535).contains(&v) => v as u16,
                    _ => {
                        ctx.error(n.pos, &o.field("port"), "port must be a number 0 to 65535");
                        0
                    }
                }
            }
            None => {
                ctx.error(
                    item.pos,
                    &o.field("port"),
                    "port is required (except for ICMP)",
                );
                0
            }
        }
    };
    let mut l7 = None;
    if let Some(h) = o.get_some("http") {
        let hp = o.field("http");
        if let Some(ho) = ctx.object(h, &hp, &["method", "path", "headers", "host"]) {
            let mut r = HttpRequest {
                method: "GET".into(),
                path: "/".into(),
                host: None,
                headers: vec![],
            };
            if let Some(m) = ho
                .get_some("method")
                .and_then(|n| ctx.string(n, &ho.field("method")))
            {
                r.method = m;
            }
            if let Some(m) = ho
                .get_some("path")
                .and_then(|n| ctx.string(n, &ho.field("path")))
            {
                r.path = m;
            }
            r.host = ho
                .get_some("host")
                .and_then(|n| ctx.string(n, &ho.field("host")));
            if let Some(hs) = ho.get_some("headers") {
                for (_, k, v) in ctx.string_map(hs, &ho.field("headers")) {
                    r.headers.push((k, v));
                }
            }
            l7 = Some(L7Request::Http(r));
        }
    }
    if let Some(k) = o.get_some("kafka") {
        let kp = o.field("kafka");
        if let Some(ko) = ctx.object(k, &kp, &["apiKey", "apiVersion", "clientID", "topic"]) {
            let mut r = KafkaRequest::default();
            if let Some(n) = ko.get_some("apiKey")
                && let Some(s) = ctx.string(n, &ko.field("apiKey"))
            {
                match kafka_api_key(&s) {
                    Some(key) => r.api_key = key,
                    None => ctx.error(
                        n.pos,
                        &ko.field("apiKey"),
                        format!("unknown Kafka apiKey \"{s}\""),
                    ),
                }
            }
            if let Some(n) = ko.get_some("apiVersion") {
                r.api_version = ctx.integer(n, &ko.field("apiVersion")).unwrap_or(0) as i16;
            }
            r.client_id = ko
                .get_some("clientID")
                .and_then(|n| ctx.string(n, &ko.field("clientID")))
                .unwrap_or_default();
            if let Some(t) = ko
                .get_some("topic")
                .and_then(|n| ctx.string(n, &ko.field("topic")))
            {
                r.topics.push(t);
            }
            l7 = Some(L7Request::Kafka(r));
        }
    }
    if let Some(d) = o.get_some("dns") {
        let dp = o.field("dns");
        if let Some(dobj) = ctx.object(d, &dp, &["query"])
            && let Some(q) = dobj
                .get_some("query")
                .and_then(|n| ctx.string(n, &dobj.field("query")))
        {
            l7 = Some(L7Request::Dns { query: q });
        }
    }
    if let Some(n) = o.get_some("dnsName") {
        let name = ctx.string(n, &o.field("dnsName"));
        let mut set = false;
        for peer in [&mut from, &mut to].into_iter().flatten() {
            if let PeerSpec::Ip { dns_name, .. } = peer {
                *dns_name = name.clone();
                set = true;
            }
        }
        if !set {
            ctx.error(n.pos, &o.field("dnsName"), "dnsName goes with an ip: peer");
        }
    }
    let expect = match req(ctx, "expect").as_deref() {
        Some("allowed") => Some(true),
        Some("denied") => Some(false),
        Some(other) => {
            ctx.error(
                o.get("expect").map_or(item.pos, |n| n.pos),
                &o.field("expect"),
                format!("expect must be allowed or denied, not \"{other}\""),
            );
            None
        }
        None => None,
    };
    if ctx.errors.len() > before {
        return None;
    }
    Some(TestCase {
        name,
        query: Query {
            from: from?,
            to: to?,
            protocol,
            port,
            l7,
        },
        expect_allowed: expect?,
        line: item.pos.line,
    })
}

/// The outcome of one test.
#[derive(Clone, Debug, Serialize)]
pub struct TestOutcome {
    pub name: String,
    pub passed: bool,
    pub expected: &'static str,
    pub actual: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Runs one test. A test whose peer was resolved from a DNS name runs on a
/// copy of the engine that has learned that name.
pub fn run_test(engine: &Engine, t: &TestCase) -> TestOutcome {
    let dns: Vec<(String, std::net::IpAddr)> = [&t.query.from, &t.query.to]
        .into_iter()
        .filter_map(|p| match p {
            PeerSpec::Ip {
                ip,
                dns_name: Some(n),
            } => Some((n.clone(), *ip)),
            _ => None,
        })
        .collect();
    let owned;
    let engine = if dns.is_empty() {
        engine
    } else {
        let mut e = engine.clone();
        for (n, ip) in dns {
            e.learn_fqdn(&n, ip);
        }
        owned = e;
        &owned
    };
    let expected = if t.expect_allowed {
        "allowed"
    } else {
        "denied"
    };
    match trace(engine, &t.query) {
        Ok(tr) => TestOutcome {
            name: t.name.clone(),
            passed: tr.allowed == t.expect_allowed,
            expected,
            actual: if tr.allowed { "allowed" } else { "denied" },
            trace: Some(tr),
            error: None,
        },
        Err(e) => TestOutcome {
            name: t.name.clone(),
            passed: false,
            expected,
            actual: "error",
            trace: None,
            error: Some(e),
        },
    }
}
