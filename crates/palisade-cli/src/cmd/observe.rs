//! `palisade observe`: Hubble's filters and output formats over Palisade's
//! flows, from a JSON file (`--input-file`) or the live agent.

use anyhow::{Context, Result, anyhow, bail};
use palisade_flow::filter::{
    Criterion, FilterSet, FlowFilter, Side, fqdn_regex, parse_label_selector,
};
use palisade_flow::flow::{Flow, FlowsResponse, TrafficDirection, Verdict, parse_rfc3339};
use palisade_flow::printer::{Format, TABLE_HEADER, render};
use palisade_policy::api::Cidr;
use std::io::{BufRead, Write};
use std::process::ExitCode;

pub const AFTER_HELP: &str = "Filters (Hubble's semantics: flags of one kind are ORed, different kinds ANDed; --not negates the next filter flag):
  --from-ip/--to-ip/--ip IP|CIDR      --from-pod/--to-pod/--pod [NS/]PREFIX
  --from-namespace/--to-namespace/-n  --from-label/--to-label/-l SELECTOR (k8s:app=web, reserved:world)
  --from-identity/--to-identity/--identity N   --from-fqdn/--to-fqdn/--fqdn PATTERN (*.example.com)
  --from-port/--to-port/--port N      --verdict FORWARDED|DROPPED|AUDIT|REDIRECTED|ERROR
  --type drop|trace|policy-verdict|l7 --protocol tcp|udp|icmp|sctp|http|dns|kafka
  --http-status 200|5+  --http-method GET  --http-path REGEX  --traffic-direction ingress|egress
Selection: --last N, --since TIME, --until TIME (RFC 3339 or a duration such as 5m, 1h), --follow.
Output: -o compact (default) | json | jsonpb | table.

Examples:
  palisade observe --input-file flows.json --verdict DROPPED --to-pod default/backend
  palisade observe --input-file - -o table --not --namespace kube-system
  palisade observe --follow --from-label app=frontend --protocol http";

/// Parses the filter flags in order (so `--not` applies to the next one).
pub fn build_filters(args: &[String]) -> Result<FilterSet> {
    // Values of one flag are ORed; different flags are ANDed.
    let mut allow: Vec<(&str, Vec<Criterion>)> = Vec::new();
    let mut deny = Vec::new();
    let mut negate = false;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a, None),
        };
        if flag == "--not" {
            negate = true;
            i += 1;
            continue;
        }
        let takes_value = FILTER_FLAGS.contains(&flag);
        if !takes_value {
            i += 1;
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                args.get(i)
                    .cloned()
                    .ok_or_else(|| anyhow!("{flag} needs a value"))?
            }
        };
        let c = criterion(flag, &value)?;
        if negate {
            deny.push(FlowFilter { criteria: vec![c] });
            negate = false;
        } else {
            let key = match flag {
                "-n" => "--namespace",
                "-l" => "--label",
                f => f,
            };
            match allow.iter_mut().find(|(k, _)| *k == key) {
                Some((_, cs)) => cs.push(c),
                None => allow.push((key, vec![c])),
            }
        }
        i += 1;
    }
    if negate {
        bail!("--not must be followed by a filter flag");
    }
    let criteria: Vec<Criterion> = allow
        .into_iter()
        .map(|(_, mut cs)| {
            if cs.len() == 1 {
                cs.remove(0)
            } else {
                Criterion::Any(cs)
            }
        })
        .collect();
    Ok(FilterSet {
        allow: if criteria.is_empty() {
            vec![]
        } else {
            vec![FlowFilter { criteria }]
        },
        deny,
    })
}

const FILTER_FLAGS: &[&str] = &[
    "--from-ip",
    "--to-ip",
    "--ip",
    "--from-pod",
    "--to-pod",
    "--pod",
    "--from-namespace",
    "--to-namespace",
    "--namespace",
    "-n",
    "--from-label",
    "--to-label",
    "--label",
    "-l",
    "--from-identity",
    "--to-identity",
    "--identity",
    "--from-fqdn",
    "--to-fqdn",
    "--fqdn",
    "--from-port",
    "--to-port",
    "--port",
    "--verdict",
    "--type",
    "--protocol",
    "--http-status",
    "--http-method",
    "--http-path",
    "--traffic-direction",
];

fn side_of(flag: &str) -> Side {
    if flag.starts_with("--from-") {
        Side::Source
    } else if flag.starts_with("--to-") {
        Side::Destination
    } else {
        Side::Either
    }
}

fn criterion(flag: &str, v: &str) -> Result<Criterion> {
    let side = side_of(flag);
    let base = match flag {
        "-n" => "namespace",
        "-l" => "label",
        _ => flag
            .trim_start_matches("--from-")
            .trim_start_matches("--to-")
            .trim_start_matches("--"),
    };
    Ok(match base {
        "ip" => Criterion::Ip(side, vec![Cidr::parse(v).map_err(|e| anyhow!("{flag}: {e}"))?]),
        "pod" => {
            let (ns, p) = match v.split_once('/') {
                Some((ns, p)) => (Some(ns.to_string()), p.to_string()),
                None => (None, v.to_string()),
            };
            Criterion::Pod(side, vec![(ns, p)])
        }
        "namespace" | "n" => Criterion::Namespace(side, vec![v.to_string()]),
        "label" | "l" => Criterion::Label(side, vec![parse_label_selector(v).map_err(|e| anyhow!("{flag}: {e}"))?]),
        "identity" => Criterion::Identity(side, vec![v.parse().map_err(|_| anyhow!("{flag}: \"{v}\" is not a numeric identity"))?]),
        "fqdn" => Criterion::Fqdn(side, vec![fqdn_regex(v).map_err(|e| anyhow!("{flag}: {e}"))?]),
        "port" => Criterion::Port(side, vec![v.parse().map_err(|_| anyhow!("{flag}: \"{v}\" is not a port"))?]),
        "verdict" => Criterion::Verdict(vec![Verdict::parse(v).ok_or_else(|| anyhow!("--verdict: unknown verdict \"{v}\"; valid: FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED, TRANSLATED"))?]),
        "type" => {
            let t = v.split(':').next().unwrap_or(v).to_ascii_lowercase();
            if !["drop", "trace", "policy-verdict", "l7"].contains(&t.as_str()) {
                bail!("--type: unknown type \"{v}\"; valid: drop, trace, policy-verdict, l7");
            }
            Criterion::Type(vec![t])
        }
        "protocol" => {
            let p = v.to_ascii_lowercase();
            if !["tcp", "udp", "sctp", "icmp", "icmpv4", "icmpv6", "http", "dns", "kafka"].contains(&p.as_str()) {
                bail!("--protocol: unknown protocol \"{v}\"; valid: tcp, udp, sctp, icmp, http, dns, kafka");
            }
            Criterion::Protocol(vec![p])
        }
        "http-status" => Criterion::HttpStatus(vec![v.to_string()]),
        "http-method" => Criterion::HttpMethod(vec![v.to_string()]),
        "http-path" => Criterion::HttpPath(vec![regex::Regex::new(v).map_err(|e| anyhow!("--http-path: {e}"))?]),
        "traffic-direction" => Criterion::Direction(vec![match v.to_ascii_lowercase().as_str() {
            "ingress" => TrafficDirection::Ingress,
            "egress" => TrafficDirection::Egress,
            _ => bail!("--traffic-direction: use ingress or egress"),
        }]),
        _ => bail!("unknown filter {flag}"),
    })
}

/// `5m`, `1h`, `30s` before now, or an RFC 3339 time; in ns since the epoch.
pub fn parse_time(s: &str, now_ns: u128) -> Result<u128> {
    if let Some(t) = parse_rfc3339(s) {
        return Ok(t);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u128 = num
        .parse()
        .map_err(|_| anyhow!("invalid time \"{s}\": use RFC 3339 or a duration like 5m"))?;
    let mult: u128 = match unit {
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" => 86_400_000_000_000,
        _ => bail!("invalid duration \"{s}\": use s, m, h or d"),
    };
    Ok(now_ns.saturating_sub(n * mult))
}

pub struct Selection {
    pub last: Option<usize>,
    pub since: Option<u128>,
    pub until: Option<u128>,
}

fn in_window(f: &Flow, sel: &Selection) -> bool {
    let t = parse_rfc3339(&f.time).unwrap_or(0);
    sel.since.is_none_or(|s| t >= s) && sel.until.is_none_or(|u| t <= u)
}

/// Reads Hubble jsonpb lines (GetFlowsResponse) or bare Flow lines, or one
/// JSON array of either.
pub fn read_flows(path: &str) -> Result<Vec<FlowsResponse>> {
    let text = if path == "-" {
        let mut s = String::new();
        for line in std::io::stdin().lock().lines() {
            s.push_str(&line?);
            s.push('\n');
        }
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("{path}: cannot read"))?
    };
    let parse_one = |v: serde_json::Value, where_: &str| -> Result<FlowsResponse> {
        if v.get("flow").is_some() || v.get("lost_events").is_some() {
            serde_json::from_value(v).map_err(|e| anyhow!("{where_}: not a Hubble flow: {e}"))
        } else {
            let flow: Flow = serde_json::from_value(v)
                .map_err(|e| anyhow!("{where_}: not a Hubble flow: {e}"))?;
            Ok(FlowsResponse {
                node_name: flow.node_name.clone(),
                time: flow.time.clone(),
                flow: Some(flow),
                ..Default::default()
            })
        }
    };
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let arr: Vec<serde_json::Value> =
            serde_json::from_str(trimmed).map_err(|e| anyhow!("{path}: {e}"))?;
        return arr
            .into_iter()
            .enumerate()
            .map(|(i, v)| parse_one(v, &format!("{path}[{i}]")))
            .collect();
    }
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow!("{path}:{}: invalid JSON: {e}", n + 1))?;
        out.push(parse_one(v, &format!("{path}:{}", n + 1))?);
    }
    Ok(out)
}

pub fn print_flows(
    flows: &[FlowsResponse],
    filters: &FilterSet,
    sel: &Selection,
    format: Format,
) -> Result<usize> {
    let mut picked: Vec<&FlowsResponse> = flows
        .iter()
        .filter(|r| {
            r.lost_events.is_some()
                || r.flow
                    .as_ref()
                    .is_some_and(|f| filters.matches(f) && in_window(f, sel))
        })
        .collect();
    if let Some(n) = sel.last {
        let skip = picked.len().saturating_sub(n);
        picked = picked.split_off(skip);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if format == Format::Table {
        writeln!(out, "{TABLE_HEADER}")?;
    }
    for r in &picked {
        writeln!(out, "{}", render(r, format))?;
    }
    Ok(picked.len())
}

/// What both sources share: the output format, the filters and the time
/// window (`--since`/`--until` relative to now).
fn query(
    raw_args: &[String],
    last: Option<usize>,
    since: Option<String>,
    until: Option<String>,
    output: &str,
) -> Result<(Format, FilterSet, Selection)> {
    let format =
        Format::parse(output).ok_or_else(|| anyhow!("-o: use compact, json, jsonpb or table"))?;
    let filters = build_filters(raw_args)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let sel = Selection {
        last,
        since: since.map(|s| parse_time(&s, now)).transpose()?,
        until: until.map(|s| parse_time(&s, now)).transpose()?,
    };
    Ok((format, filters, sel))
}

pub fn run_offline(
    input: &str,
    raw_args: &[String],
    last: Option<usize>,
    since: Option<String>,
    until: Option<String>,
    output: &str,
) -> Result<ExitCode> {
    let (format, filters, sel) = query(raw_args, last, since, until, output)?;
    let flows = read_flows(input)?;
    print_flows(&flows, &filters, &sel, format)?;
    Ok(ExitCode::SUCCESS)
}

/// Reads flows from the live agent (`{"op":"flows"}` on its socket); with
/// `--follow`, keeps polling from the last sequence number seen.
pub fn run_live(
    client: &palisade_agent::Client,
    raw_args: &[String],
    last: Option<usize>,
    since: Option<String>,
    until: Option<String>,
    output: &str,
    follow: bool,
) -> Result<ExitCode> {
    use palisade_agent::Request;
    use palisade_agent::flows::FlowsPage;
    let (format, filters, mut sel) = query(raw_args, last, since, until, output)?;
    let fetch = |since: Option<u64>| -> Result<FlowsPage> {
        client
            .request(&Request::Flows { since, last: None })
            .map_err(|e| anyhow!("{e}"))
    };
    let page = fetch(None)?;
    // Without --follow and without --last, Hubble prints everything kept.
    print_flows(&page.flows, &filters, &sel, format)?;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    super::live::install_stop_signals();
    sel.last = None;
    let mut next = page.next;
    while !super::live::stopping() {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let page = fetch(Some(next))?;
        next = page.next;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for r in page.flows.iter().filter(|r| {
            r.lost_events.is_some()
                || r.flow
                    .as_ref()
                    .is_some_and(|f| filters.matches(f) && in_window(f, &sel))
        }) {
            writeln!(out, "{}", render(r, format))?;
        }
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
