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
        GetFormat::Json => println!("{}", serde_json::to_string_pretty(&policies)?),
        GetFormat::Yaml => {
            for p in &policies {
                println!("---");
                print!(
                    "{}",
                    palisade_policy::manifest::to_yaml(&serde_json::to_value(p)?)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
