//! `palisade policy validate` and `palisade policy get`.

use crate::input::{parse_sources, read_sources};
use anyhow::{Result, bail};
use palisade_policy::manifest::{Object, Options};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Format {
    Text,
    Json,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum GetFormat {
    Yaml,
    Json,
}

pub fn validate(paths: &[PathBuf], format: Format, opts: &Options) -> Result<ExitCode> {
    let sources = read_sources(paths)?;
    let parsed = parse_sources(&sources, opts);
    let mut policies = 0;
    let mut valid = 0;
    let mut invalid = 0;
    let mut errors = Vec::new();
    for (_, docs) in &parsed {
        for d in docs {
            if d.is_policy {
                policies += 1;
                if d.errors.is_empty() {
                    valid += 1;
                } else {
                    invalid += 1;
                }
            } else if !d.errors.is_empty() {
                invalid += 1;
            }
            errors.extend(d.errors.iter().cloned());
        }
    }
    let files = sources.len();
    match format {
        Format::Text => {
            for e in &errors {
                println!("{e}");
            }
            println!(
                "{policies} {} in {files} {}: {valid} valid, {invalid} invalid",
                if policies == 1 { "policy" } else { "policies" },
                if files == 1 { "file" } else { "files" }
            );
        }
        Format::Json => {
            let out = serde_json::json!({
                "policies": policies,
                "files": files,
                "valid": valid,
                "invalid": invalid,
                "errors": errors,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn get(paths: &[PathBuf], format: GetFormat, opts: &Options) -> Result<ExitCode> {
    let sources = read_sources(paths)?;
    let parsed = parse_sources(&sources, opts);
    let mut errors = Vec::new();
    let mut policies = Vec::new();
    for (_, docs) in parsed {
        for d in docs {
            errors.extend(d.errors);
            if let Some(Object::Policy(p)) = d.object {
                policies.push(p);
            }
        }
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{e}");
        }
        bail!(
            "{} error(s); nothing printed (run `palisade policy validate` for details)",
            errors.len()
        );
    }
    match format {
        GetFormat::Json => {
            let all: Vec<serde_json::Value> =
                policies.iter().map(understood).collect::<Result<_>>()?;
            println!("{}", serde_json::to_string_pretty(&all)?)
        }
        GetFormat::Yaml => {
            for p in &policies {
                println!("---");
                print!("{}", palisade_policy::manifest::to_yaml(&understood(p)?));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A policy as written (with defaults explicit) plus its effective form:
/// the subject and peer selectors after Cilium's namespace and cluster
/// scoping, entities expanded, L4 keys the engine will use.
fn understood(p: &palisade_policy::api::Policy) -> Result<serde_json::Value> {
    use palisade_policy::repository::{L4Item, compile_policy};
    let mut v = serde_json::to_value(p)?;
    let compiled = compile_policy(p, &palisade_policy::cluster::ClusterState::default());
    let effective: Vec<serde_json::Value> = compiled
        .iter()
        .zip(&p.rules)
        .map(|(c, r)| {
            let elements: Vec<serde_json::Value> = c
                .elements
                .iter()
                .map(|e| {
                    let ports: Vec<String> = e
                        .l4
                        .iter()
                        .map(|l| match l {
                            L4Item::Any => "ANY".to_string(),
                            L4Item::Port {
                                proto,
                                port,
                                end_port,
                                l7,
                                ..
                            } => {
                                let port = match port {
                                    palisade_policy::api::PortSpec::Number(0) => "0".to_string(),
                                    palisade_policy::api::PortSpec::Number(n) => match end_port {
                                        Some(e) => format!("{n}-{e}"),
                                        None => n.to_string(),
                                    },
                                    palisade_policy::api::PortSpec::Named(n) => n.clone(),
                                };
                                match l7 {
                                    Some(r) => format!("{port}/{proto} (L7 {})", r.kind().as_str()),
                                    None => format!("{port}/{proto}"),
                                }
                            }
                            L4Item::Icmp { proto, icmp_type } => {
                                format!("{proto} type {icmp_type}")
                            }
                        })
                        .collect();
                    serde_json::json!({
                        "section": e.section,
                        "direction": e.direction,
                        "verdict": if e.deny { "deny" } else { "allow" },
                        "peers": e.peers.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
                        "ports": ports,
                    })
                })
                .collect();
            serde_json::json!({
                "section": r.section,
                "subject": c.subject.to_string(),
                "defaultDeny": r.default_deny,
                "elements": elements,
                "warnings": c.warnings,
            })
        })
        .collect();
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("effective".into(), serde_json::Value::Array(effective));
    }
    Ok(v)
}
