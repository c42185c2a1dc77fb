//! `palisade bpf policy get`: the live kernel policy map, via the agent.

use std::process::ExitCode;

use palisade_agent::api::{BpfPolicy, Request};

use super::live::{self, Format, SocketArg};

#[derive(clap::Subcommand, Debug)]
pub enum BpfCommand {
    /// The endpoints' kernel policy maps.
    #[command(subcommand)]
    Policy(BpfPolicyCommand),
}

#[derive(clap::Subcommand, Debug)]
pub enum BpfPolicyCommand {
    /// Print one endpoint's live kernel policy map, with identities as labels and the deciding rules.
    #[command(
        after_help = "Examples:\n  palisade bpf policy get default/backend\n  palisade bpf policy get default/backend -o json"
    )]
    Get {
        /// NAMESPACE/POD
        pod: String,
        #[command(flatten)]
        socket: SocketArg,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

pub fn run(c: BpfCommand) -> anyhow::Result<ExitCode> {
    let BpfCommand::Policy(BpfPolicyCommand::Get {
        pod,
        socket,
        output,
    }) = c;
    let p: BpfPolicy = match socket.client().request(&Request::BpfPolicyGet { pod }) {
        Ok(p) => p,
        Err(e) => return Ok(live::report(&e)),
    };
    if output == Format::Json {
        live::print_json(&p)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Endpoint {} ({}): {} entries in the kernel map{}",
        p.endpoint,
        p.pod,
        p.entries.len(),
        if p.in_sync {
            ", in sync with the policy engine"
        } else {
            ", NOT in sync with the policy engine (see `palisade endpoint list`)"
        }
    );
    let rows: Vec<Vec<String>> = p
        .entries
        .iter()
        .map(|e| {
            vec![
                e.policy.clone(),
                e.direction.clone(),
                if e.identity == 0 {
                    "ANY".into()
                } else {
                    format!("{} ({})", e.labels, e.identity)
                },
                e.port.clone(),
                if e.proxy_port == 0 {
                    "NONE".into()
                } else {
                    e.proxy_port.to_string()
                },
                format!("{:#010x}", e.cookie),
                e.rules.join("; "),
            ]
        })
        .collect();
    live::print_table(
        &[
            "POLICY",
            "DIRECTION",
            "LABELS (IDENTITY)",
            "PORT/PROTO",
            "PROXY PORT",
            "COOKIE",
            "RULES",
        ],
        &rows,
    );
    if !p.counters.is_empty() {
        println!("\nCounters:");
        for c in &p.counters {
            println!("  {c}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
