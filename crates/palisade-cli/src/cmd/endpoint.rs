//! `palisade endpoint list`.

use std::process::ExitCode;

use palisade_agent::api::{EndpointRow, Request};

use super::live::{self, Format, SocketArg};

#[derive(clap::Subcommand, Debug)]
pub enum EndpointCommand {
    /// List the endpoints (local pods) like `cilium endpoint list`.
    #[command(after_help = "Examples:\n  palisade endpoint list\n  palisade endpoint list -o json")]
    List {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

fn enforcement(on: bool) -> String {
    if on { "Enabled" } else { "Disabled" }.to_string()
}

pub fn run(c: EndpointCommand) -> anyhow::Result<ExitCode> {
    let EndpointCommand::List { socket, output } = c;
    let rows: Vec<EndpointRow> = match socket.client().request(&Request::EndpointList) {
        Ok(r) => r,
        Err(e) => return Ok(live::report(&e)),
    };
    if output == Format::Json {
        live::print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Vec::new();
    for r in &rows {
        let mut labels = r.labels.iter();
        table.push(vec![
            r.id.to_string(),
            enforcement(r.ingress_enforced),
            enforcement(r.egress_enforced),
            r.identity.to_string(),
            labels.next().cloned().unwrap_or_default(),
            r.ipv4.clone(),
            r.status.clone(),
        ]);
        for l in labels {
            table.push(vec![
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                l.clone(),
                String::new(),
                String::new(),
            ]);
        }
    }
    live::print_table(
        &[
            "ENDPOINT",
            "POLICY (ingress) ENFORCEMENT",
            "POLICY (egress) ENFORCEMENT",
            "IDENTITY",
            "LABELS (source:key[=value])",
            "IPv4",
            "STATUS",
        ],
        &table,
    );
    Ok(ExitCode::SUCCESS)
}
