//! `palisade policy test|trace|connectivity|map`: offline questions about
//! what a set of manifests allows, answered by the engine.

use crate::input::{parse_sources, read_sources};
use anyhow::{Result, anyhow, bail};
use palisade_policy::api::{Direction, Protocol};
use palisade_policy::engine::Engine;
use palisade_policy::l7::{HttpRequest, KafkaRequest, L7Request, kafka_api_key};
use palisade_policy::manifest::{Object, Options};
use palisade_policy::testspec::{parse_tests, run_test};
use palisade_policy::trace::{PeerSpec, Query, trace};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Loads manifests into an engine; any invalid document is an input error.
pub fn load_engine(files: &[PathBuf], opts: &Options) -> Result<Engine> {
    let engine = Engine::from_objects(load_objects(files, opts)?);
    for w in engine.warnings() {
        eprintln!("warning: {w}");
    }
    Ok(engine)
}

/// Reads and decodes manifests; any invalid document is an input error.
pub fn load_objects(files: &[PathBuf], opts: &Options) -> Result<Vec<Object>> {
    let sources = read_sources(files)?;
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (_, docs) in parse_sources(&sources, opts) {
        for d in docs {
            errors.extend(d.errors);
            if let Some(o) = d.object {
                objects.push(o);
            }
        }
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{e}");
        }
        bail!(
            "{} error(s) in the manifests; nothing was evaluated (a half-loaded policy set would give wrong answers)",
            errors.len()
        );
    }
    Ok(objects
        .into_iter()
        .filter(|o| !matches!(o, Object::Skipped { .. }))
        .collect())
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFormat {
    Text,
    Json,
}

pub fn test(
    files: &[PathBuf],
    tests: &Path,
    format: OutFormat,
    opts: &Options,
) -> Result<ExitCode> {
    let engine = load_engine(files, opts)?;
    let text = std::fs::read_to_string(tests).map_err(|e| anyhow!("{}: {e}", tests.display()))?;
    let cases = match parse_tests(&tests.display().to_string(), &text) {
        Ok(c) => c,
        Err(errs) => {
            for e in &errs {
                eprintln!("{e}");
            }
            bail!("{} error(s) in the tests file", errs.len());
        }
    };
    let mut passed = 0;
    let mut failed = 0;
    for t in &cases {
        let out = run_test(&engine, t);
        if out.passed {
            passed += 1;
        } else {
            failed += 1;
        }
        match format {
            OutFormat::Json => println!("{}", serde_json::to_string(&out)?),
            OutFormat::Text => {
                if out.passed {
                    println!("PASS  {}", out.name);
                } else {
                    println!(
                        "FAIL  {} (expected {}, got {})",
                        out.name, out.expected, out.actual
                    );
                    if let Some(tr) = &out.trace {
                        for line in tr.to_string().lines() {
                            println!("      {line}");
                        }
                    }
                    if let Some(e) = &out.error {
                        println!("      error: {e}");
                    }
                }
            }
        }
    }
    if format == OutFormat::Text {
        println!("{passed} passed, {failed} failed");
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Parses `80/TCP`, `53/udp`, `80` (TCP), `8/ICMP` (ICMP type).
pub fn parse_port(s: &str) -> Result<(u16, Protocol)> {
    let (port, proto) = match s.split_once('/') {
        Some((p, pr)) => (
            p,
            Protocol::parse(pr).ok_or_else(|| {
                anyhow!("unknown protocol \"{pr}\" in \"{s}\"; use TCP, UDP, SCTP or ICMP")
            })?,
        ),
        None => (s, Protocol::TCP),
    };
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow!("invalid port \"{s}\": expected PORT/PROTOCOL such as 80/TCP"))?;
    Ok((port, proto))
}

pub struct TraceArgs {
    pub from: String,
    pub to: String,
    pub port: String,
    pub http_method: Option<String>,
    pub http_path: Option<String>,
    pub http_headers: Vec<String>,
    pub kafka_api_key: Option<String>,
    pub kafka_topic: Option<String>,
    pub kafka_client_id: Option<String>,
    pub dns_query: Option<String>,
    pub dns_name: Option<String>,
}

pub fn run_trace(
    files: &[PathBuf],
    a: TraceArgs,
    format: OutFormat,
    opts: &Options,
) -> Result<ExitCode> {
    let mut engines =
        palisade_policy::audit::AuditedEngines::from_objects(load_objects(files, opts)?);
    let mut from = PeerSpec::parse(&a.from).map_err(|e| anyhow!("--from: {e}"))?;
    let mut to = PeerSpec::parse(&a.to).map_err(|e| anyhow!("--to: {e}"))?;
    if let Some(name) = &a.dns_name {
        let mut set = false;
        for p in [&mut from, &mut to] {
            if let PeerSpec::Ip { ip, dns_name } = p {
                *dns_name = Some(name.clone());
                engines.full.learn_fqdn(name, *ip);
                engines.enforced.learn_fqdn(name, *ip);
                set = true;
            }
        }
        if !set {
            bail!("--dns-name goes with an ip: peer");
        }
    }
    let (port, protocol) = parse_port(&a.port)?;
    let l7 = if a.http_method.is_some() || a.http_path.is_some() || !a.http_headers.is_empty() {
        let mut headers = Vec::new();
        for h in &a.http_headers {
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| anyhow!("--http-header \"{h}\": use 'Name: value'"))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        Some(L7Request::Http(HttpRequest {
            method: a.http_method.unwrap_or_else(|| "GET".into()),
            path: a.http_path.unwrap_or_else(|| "/".into()),
            host: None,
            headers,
        }))
    } else if let Some(k) = &a.kafka_api_key {
        Some(L7Request::Kafka(KafkaRequest {
            api_key: kafka_api_key(k).ok_or_else(|| anyhow!("unknown Kafka API key \"{k}\""))?,
            api_version: 0,
            client_id: a.kafka_client_id.unwrap_or_default(),
            topics: a.kafka_topic.into_iter().collect(),
        }))
    } else {
        a.dns_query.map(|q| L7Request::Dns { query: q })
    };
    let q = Query {
        from,
        to,
        protocol,
        port,
        l7,
    };
    let v = palisade_policy::audit::trace_audited(&engines, &q).map_err(|e| anyhow!(e))?;
    match format {
        OutFormat::Text => {
            println!("{}", v.result);
            if v.audit {
                println!(
                    "Audit: only audited policies ({}) deny this; it is reported as AUDIT and delivered",
                    engines
                        .audited
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        OutFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
    }
    Ok(if v.delivered {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn connectivity(files: &[PathBuf], ports: &[String], opts: &Options) -> Result<ExitCode> {
    let engine = load_engine(files, opts)?;
    let pods: Vec<String> = engine.state().pods.keys().cloned().collect();
    if pods.is_empty() {
        bail!("no pods in the manifests: add Pod objects (the cluster state) to see a matrix");
    }
    let ports: Vec<String> = if ports.is_empty() {
        vec!["80/TCP".into()]
    } else {
        ports.to_vec()
    };
    let width = pods.iter().map(|p| p.len()).max().unwrap_or(4).max(4);
    for p in &ports {
        let (port, protocol) = parse_port(p)?;
        println!("{p}  (rows: from, columns: to; . allowed, X denied)");
        print!("{:width$} ", "");
        for (i, _) in pods.iter().enumerate() {
            print!(" {:>2}", i + 1);
        }
        println!();
        for (i, from) in pods.iter().enumerate() {
            print!("{:width$} ", format!("{}:{from}", i + 1), width = width + 3);
            for to in &pods {
                let q = Query {
                    from: PeerSpec::Pod(from.clone()),
                    to: PeerSpec::Pod(to.clone()),
                    protocol,
                    port,
                    l7: None,
                };
                let mark = match trace(&engine, &q) {
                    Ok(r) if r.allowed => ".",
                    Ok(_) => "X",
                    Err(_) => "?",
                };
                print!("  {mark}");
            }
            println!();
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

pub fn map(files: &[PathBuf], pod: &str, format: OutFormat, opts: &Options) -> Result<ExitCode> {
    let engine = load_engine(files, opts)?;
    let m = engine
        .endpoint_map(pod)
        .ok_or_else(|| anyhow!("{pod} is not an endpoint (a pod in the manifests)"))?;
    let id = engine.endpoint_identity(pod).unwrap_or(0);
    if format == OutFormat::Json {
        let entries: Vec<serde_json::Value> = m
            .entries
            .iter()
            .map(|(k, e)| {
                let labels = engine
                    .identities()
                    .get(k.identity)
                    .map(|i| i.labels.to_string());
                serde_json::json!({
                    "identity": k.identity,
                    "labels": labels,
                    "direction": k.direction,
                    "port": k.port_text(),
                    "protocol": k.proto,
                    "prefixLen": k.prefix_len,
                    "verdict": e.verdict,
                    "precedence": e.precedence,
                    "authType": e.auth_type,
                    "cookie": e.cookie(),
                    "derivedFrom": e.derived_from.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let out = serde_json::json!({
            "endpoint": pod,
            "identity": id,
            "ingress": m.ingress,
            "egress": m.egress,
            "entries": entries,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Endpoint {pod}  identity {id}");
    for dir in [Direction::Ingress, Direction::Egress] {
        let e = m.enforcement(dir);
        println!(
            "  {dir}: {}",
            if e.default_deny {
                format!(
                    "enforced (default deny), selected by {}",
                    e.selected_by
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                "not enforced (default allow)".into()
            }
        );
    }
    println!(
        "{:<7} {:<9} {:<48} {:<14} {:<6} {:<10} RULES",
        "POLICY",
        "DIRECTION",
        "LABELS (source:key[=value]) or IDENTITY",
        "PORT/PROTO",
        "PROXY",
        "PRECEDENCE"
    );
    for (k, e) in &m.entries {
        let labels = if k.identity == 0 {
            "ANY".to_string()
        } else {
            engine
                .identities()
                .get(k.identity)
                .map(|i| i.labels.to_string())
                .unwrap_or_else(|| k.identity.to_string())
        };
        let verdict = if e.verdict == palisade_policy::mapstate::Verdict::Deny {
            "Deny"
        } else {
            "Allow"
        };
        let proxy = match e.verdict {
            palisade_policy::mapstate::Verdict::Redirect(kind) => kind.as_str(),
            _ => "-",
        };
        let rules = if e.derived_from.is_empty() {
            "(default allow)".to_string()
        } else {
            e.derived_from
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        };
        println!(
            "{:<7} {:<9} {:<48} {:<14} {:<6} {:<10} {}",
            verdict,
            k.direction.as_str(),
            labels,
            k.port_text(),
            proxy,
            e.precedence & 0xff,
            rules
        );
    }
    Ok(ExitCode::SUCCESS)
}
