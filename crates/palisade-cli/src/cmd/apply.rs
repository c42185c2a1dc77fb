//! `palisade policy apply -f` and `palisade policy delete -f`: send
//! manifests to the agent, which validates the whole change first.

use std::path::PathBuf;
use std::process::ExitCode;

use palisade_agent::SourceFile;
use palisade_agent::api::{ApplyReport, Request};

use super::live::{self, SocketArg};

pub fn run(files: &[PathBuf], socket: &SocketArg, delete: bool) -> anyhow::Result<ExitCode> {
    let sources: Vec<SourceFile> = crate::input::read_sources(files)?
        .into_iter()
        .map(|s| SourceFile {
            name: s.name,
            text: s.text,
        })
        .collect();
    let req = if delete {
        Request::PolicyDelete { files: sources }
    } else {
        Request::PolicyApply { files: sources }
    };
    let r: ApplyReport = match socket.client().request(&req) {
        Ok(r) => r,
        Err(e) => return Ok(live::report(&e)),
    };
    for o in &r.objects {
        println!("{o} {}", if delete { "deleted" } else { "applied" });
    }
    for o in &r.not_found {
        println!("{o} not found");
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    for e in &r.endpoint_errors {
        eprintln!("endpoint error: {e}");
    }
    Ok(if r.endpoint_errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
