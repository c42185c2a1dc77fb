//! `palisade policy impact`: replay recorded flows against a candidate
//! policy set and list what would change.

use super::explain::{OutFormat, load_objects};
use super::observe::read_flows;
use anyhow::{Result, anyhow};
use palisade_flow::flow::{Flow, Verdict};
use palisade_policy::api::Protocol;
use palisade_policy::audit::{AuditedEngines, trace_audited};
use palisade_policy::l7::{HttpRequest, L7Request};
use palisade_policy::manifest::Options;
use palisade_policy::trace::{PeerSpec, Query};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// (from, to, port, request, was, now).
type GroupKey = (
    String,
    String,
    String,
    Option<String>,
    &'static str,
    &'static str,
);

#[derive(Serialize)]
struct Change {
    change: &'static str,
    from: String,
    to: String,
    port: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<String>,
    flows: usize,
    was: &'static str,
    now: &'static str,
    why: String,
}

fn peer(e: Option<&palisade_flow::flow::Endpoint>, ip: &str) -> Option<PeerSpec> {
    match e {
        Some(e) if !e.pod_name.is_empty() => {
            Some(PeerSpec::Pod(format!("{}/{}", e.namespace, e.pod_name)))
        }
        _ => ip
            .parse()
            .ok()
            .map(|ip| PeerSpec::Ip { ip, dns_name: None }),
    }
}

/// The connection a flow records, as a query.
fn query_of(f: &Flow) -> Option<Query> {
    if f.is_reply == Some(true) {
        return None;
    }
    let ip = f.ip.clone().unwrap_or_default();
    let l4 = f.l4.as_ref()?;
    let (proto, _, dport) = l4.summary();
    let protocol = match proto {
        "TCP" => Protocol::TCP,
        "UDP" => Protocol::UDP,
        "SCTP" => Protocol::SCTP,
        "ICMPv4" => Protocol::ICMP,
        _ => return None,
    };
    let l7 = f.l7.as_ref().and_then(|l| l.http.as_ref()).map(|h| {
        let path = h
            .url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
            .unwrap_or_else(|| h.url.clone());
        L7Request::Http(HttpRequest {
            method: h.method.clone(),
            path,
            host: None,
            headers: vec![],
        })
    });
    Some(Query {
        from: peer(f.source.as_ref(), &ip.source)?,
        to: peer(f.destination.as_ref(), &ip.destination)?,
        protocol,
        port: u16::try_from(dport).ok()?,
        l7,
    })
}

pub fn impact(
    files: &[PathBuf],
    flows: &str,
    format: OutFormat,
    opts: &Options,
) -> Result<ExitCode> {
    let engines = AuditedEngines::from_objects(load_objects(files, opts)?);
    let records = read_flows(flows)?;
    let mut groups: BTreeMap<GroupKey, (usize, String)> = BTreeMap::new();
    let mut replayed = 0usize;
    let mut skipped = 0usize;
    for r in &records {
        let Some(f) = &r.flow else { continue };
        let was = match f.verdict {
            Verdict::Forwarded | Verdict::Redirected => "allowed",
            Verdict::Dropped => "denied",
            Verdict::Audit => "audit",
            _ => {
                skipped += 1;
                continue;
            }
        };
        let Some(q) = query_of(f) else {
            skipped += 1;
            continue;
        };
        let v = match trace_audited(&engines, &q) {
            Ok(v) => v,
            Err(_) => {
                skipped += 1;
                continue;
            }
        };
        replayed += 1;
        let now = if v.audit {
            "audit"
        } else if v.delivered {
            "allowed"
        } else {
            "denied"
        };
        let decisive = if v.result.allowed {
            v.result.directions.last()
        } else {
            v.result.directions.iter().find(|d| !d.allowed)
        };
        let why = decisive
            .map(|d| {
                let text =
                    d.l7.as_ref()
                        .filter(|l| !l.allowed || d.allowed)
                        .map_or(d.explanation.clone(), |l| l.explanation.clone());
                format!("{} of {}: {text}", d.direction, d.endpoint)
            })
            .unwrap_or_default();
        let request = match &q.l7 {
            Some(L7Request::Http(h)) => Some(format!("{} {}", h.method, h.path)),
            _ => None,
        };
        let key = (
            q.from.to_string(),
            q.to.to_string(),
            format!("{}/{}", q.port, q.protocol),
            request,
            was,
            now,
        );
        let e = groups.entry(key).or_insert((0, why));
        e.0 += 1;
    }
    let mut changes = Vec::new();
    for ((from, to, port, request, was, now), (n, why)) in groups {
        let delivered = |s: &str| s != "denied";
        let change = match (delivered(was), delivered(now)) {
            (true, false) => "newly dropped",
            (false, true) => "newly allowed",
            _ if was != now => "audit changed",
            _ => continue,
        };
        changes.push(Change {
            change,
            from,
            to,
            port,
            request,
            flows: n,
            was,
            now,
            why,
        });
    }
    changes.sort_by_key(|c| (c.change != "newly dropped", c.from.clone(), c.to.clone()));
    let newly_dropped = changes
        .iter()
        .filter(|c| c.change == "newly dropped")
        .map(|c| c.flows)
        .sum::<usize>();
    let newly_allowed = changes
        .iter()
        .filter(|c| c.change == "newly allowed")
        .map(|c| c.flows)
        .sum::<usize>();
    match format {
        OutFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "replayed": replayed, "skipped": skipped, "newly_dropped": newly_dropped, "newly_allowed": newly_allowed, "changes": changes,
            }))?
        ),
        OutFormat::Text => {
            if !engines.audited.is_empty() {
                println!(
                    "audit mode: {}",
                    engines
                        .audited
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            for c in &changes {
                println!(
                    "{:<14} {} -> {} {}{} ({} flow{}; was {}, now {})",
                    c.change.to_uppercase(),
                    c.from,
                    c.to,
                    c.port,
                    c.request
                        .as_ref()
                        .map(|r| format!(" {r}"))
                        .unwrap_or_default(),
                    c.flows,
                    if c.flows == 1 { "" } else { "s" },
                    c.was,
                    c.now
                );
                println!("               {}", c.why);
            }
            println!(
                "{replayed} flows replayed ({skipped} skipped): {newly_dropped} newly dropped, {newly_allowed} newly allowed"
            );
        }
    }
    if replayed == 0 && !records.is_empty() {
        return Err(anyhow!(
            "no flow could be replayed: the flows name pods or addresses that the manifests do not contain"
        ));
    }
    Ok(if newly_dropped > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
