//! `palisade`: the one binary. Argument parsing, calls into the libraries,
//! printing.

mod cmd;
mod input;

use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "Palisade: Cilium-model network policy you can trust, test and debug",
    long_about = "Palisade reads CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and Kubernetes \
NetworkPolicy manifests, resolves them against label-based security identities, and explains \
every verdict with the rule that decided it.",
    after_help = "Examples:\n  palisade policy validate policies/\n  palisade policy trace -f cluster.yaml -f policies/ --from default/frontend --to default/backend --port 80/TCP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Validate, inspect, explain and test policies offline (no agent needed).
    #[command(subcommand)]
    Policy(cmd::PolicyCommand),
    /// Run the agent: watches manifests, runs local pods, enforces policy with eBPF, serves the API.
    Agent(cmd::agent::AgentArgs),
    /// Run, exec into, delete and list local pods (via the agent).
    #[command(subcommand)]
    Pod(cmd::pod::PodCommand),
    /// Inspect the agent's endpoints.
    #[command(subcommand)]
    Endpoint(cmd::endpoint::EndpointCommand),
    /// Inspect live kernel (BPF) state via the agent.
    #[command(subcommand)]
    Bpf(cmd::bpf::BpfCommand),
    /// Is the agent up and its datapath loaded? (exit 0 only then)
    Status(cmd::status::StatusArgs),
    /// The hands-on lab: the seed's policies on real pods with real traffic (needs root).
    Lab(cmd::lab::LabArgs),
    /// Observe flows with Hubble's filters, from a file or the live agent.
    #[command(after_help = cmd::observe::AFTER_HELP)]
    Observe(cmd::ObserveArgs),
    /// Run the L7 proxy (HTTP/1.1, HTTP/2, gRPC) as its own process.
    #[command(after_help = cmd::proxy::AFTER_HELP)]
    Proxy(cmd::proxy::ProxyArgs),
    /// Inspect what the DNS proxy learned (the FQDN cache).
    #[command(subcommand)]
    Fqdn(cmd::fqdn::FqdnCommand),
    /// The service map of recorded flows: a page with workloads, connections coloured by verdict and a flow table.
    Servicemap(cmd::servicemap::ServiceMapArgs),
}

/// Agent options that change what is valid, as in Cilium's agent flags.
#[derive(Args, Clone, Debug, Default)]
pub struct FeatureArgs {
    /// Allow fromNodes/toNodes (Cilium's enable-node-selector-labels; off by default).
    #[arg(long, global = true)]
    pub enable_node_selector_labels: bool,
    /// Allow VRRP/IGMP rules and empty ports (Cilium's enable-extended-ip-protocols; off by default).
    #[arg(long, global = true)]
    pub enable_extended_ip_protocols: bool,
}

impl FeatureArgs {
    pub fn options(&self) -> palisade_policy::manifest::Options {
        palisade_policy::manifest::Options {
            enable_node_selector_labels: self.enable_node_selector_labels,
            enable_extended_ip_protocols: self.enable_extended_ip_protocols,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Short-lived commands exit quietly when the reader of their output
    // goes away (`| head`), as command-line tools do, instead of panicking
    // on a broken pipe. The servers (agent, lab, proxy, service map) keep
    // SIGPIPE ignored: a peer that closes mid-response must cost one
    // connection (EPIPE), never the process.
    let serves = matches!(
        cli.command,
        Command::Agent(_) | Command::Lab(_) | Command::Proxy(_) | Command::Servicemap(_)
    );
    if !serves {
        // SAFETY: setting the disposition of SIGPIPE before any thread
        // starts has no preconditions.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Policy(c) => cmd::run_policy(c),
        Command::Agent(a) => cmd::agent::run(a),
        Command::Pod(c) => cmd::pod::run(c),
        Command::Endpoint(c) => cmd::endpoint::run(c),
        Command::Bpf(c) => cmd::bpf::run(c),
        Command::Status(a) => cmd::status::run(a),
        Command::Lab(a) => cmd::lab::run(a),
        Command::Observe(a) => cmd::run_observe(a),
        Command::Proxy(a) => cmd::proxy::run(a),
        Command::Fqdn(c) => cmd::fqdn::run(c),
        Command::Servicemap(a) => cmd::servicemap::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
