//! `palisade status`.

use std::process::ExitCode;

use palisade_agent::api::{Request, StatusInfo};

use super::live::{self, Format, SocketArg};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit status: 0 when the agent answers and its datapath is loaded, 1 otherwise.\n\n\
Examples:\n  palisade status\n  palisade status --socket /tmp/pal.sock -o json"
)]
pub struct StatusArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

pub fn run(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let s: StatusInfo = match a.socket.client().request(&Request::Status) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("agent: down ({e})");
            return Ok(ExitCode::from(1));
        }
    };
    if a.output == Format::Json {
        live::print_json(&s)?;
    } else {
        println!(
            "Agent:        up (node {}, netns {}, address {}, pod CIDR {})",
            s.node_name, s.node_netns, s.node_address, s.pod_cidr
        );
        println!(
            "Datapath:     {} (pin root {}, policy revision {})",
            if s.datapath_loaded {
                "loaded"
            } else {
                "NOT LOADED"
            },
            s.pin_root,
            s.policy_revision
        );
        println!(
            "Endpoints:    {} ({} in error)",
            s.endpoints, s.endpoints_in_error
        );
        println!(
            "Policy:       {} policies, {} identities, {} ipcache entries, {} reconciliations",
            s.policies, s.identities, s.ipcache_entries, s.reconciliations
        );
        if let Some(d) = &s.manifests_dir {
            println!(
                "Manifests:    {d} ({})",
                if s.manifests_errors.is_empty() {
                    "ok".to_string()
                } else {
                    "last change REJECTED, last good state enforced".to_string()
                }
            );
            for e in &s.manifests_errors {
                println!("  {e}");
            }
        }
        if let Some(p) = &s.l7_proxy {
            let enforced = p
                .status
                .as_ref()
                .and_then(|st| st.feed_revision)
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into());
            println!(
                "L7 proxy:     {} (pid {}, feed revision {} written, {} enforced, {} restarts)",
                if p.running { "running" } else { "NOT RUNNING" },
                p.pid,
                p.feed_revision,
                enforced,
                p.restarts
            );
            if let Some(st) = &p.status {
                println!(
                    "              {} requests forwarded, {} denied, {} failed; {} open connections; {} feeds rejected",
                    st.stats.requests_forwarded,
                    st.stats.requests_dropped,
                    st.stats.requests_failed,
                    st.stats.open_connections,
                    st.stats.feed_rejected
                );
                if let Some(r) = &st.rejected_reason {
                    println!("              last rejected feed: {r}");
                }
            }
        }
        for w in &s.warnings {
            println!("Warning:      {w}");
        }
    }
    Ok(if s.datapath_loaded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
