//! `palisade agent`: the daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use palisade_agent::config::PodCidr;
use palisade_agent::{Agent, AgentConfig};

use super::live;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "The agent's \"host\" is a dedicated network namespace (--node-netns, default \
palisade-node) that holds the pods' host-side veths, routes and IPv4 forwarding: nothing changes \
in the machine's root namespace. Pods, IPAM and API-applied objects persist in the state \
directory; maps and TCX links are pinned under the pin root, so enforcement continues while the \
agent is down and a restarted agent adopts them without a gap.\n\n\
Examples:\n  sudo palisade agent\n  sudo palisade agent --manifests ./policies --state-dir /tmp/pal --socket /tmp/pal.sock --node-name node-1"
)]
pub struct AgentArgs {
    /// State directory (pods, IPAM, applied objects).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Config file (YAML/JSON: nodeName, nodeNetns, podCIDR, nodeAddress, stateDir, manifestsDir, socket, pinRoot, policyCapacity, gcIntervalSeconds).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Manifests directory, watched for changes.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// API socket.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// bpffs pin root.
    #[arg(long)]
    pub pin_root: Option<PathBuf>,
    /// Node network namespace (created if missing).
    #[arg(long)]
    pub node_netns: Option<String>,
    /// Node name (default: the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Pod CIDR of this node (the node address is its first address).
    #[arg(long)]
    pub pod_cidr: Option<String>,
    /// Address of the flow web endpoints: service map (/), /api/flows,
    /// /metrics. Default 127.0.0.1:9962 (loopback only); `off` disables them.
    #[arg(long, value_name = "ADDR:PORT|off")]
    pub web_listen: Option<String>,
    /// Do not run the L7 proxies. By default the agent runs them in the node
    /// namespace: HTTP/gRPC on 15001 as a supervised process of its own
    /// (`palisade proxy`, state in STATE_DIR/l7-proxy/: it keeps enforcing
    /// while the agent restarts and is adopted by the next agent), DNS on
    /// 15053 (toFQDNs learning, `palisade fqdn cache list`) and Kafka on
    /// 15092 inside the agent; their records become L7 flows. Without them,
    /// policies' L7 rules are not enforced (the ports they cover are allowed
    /// at L3/L4 only), and `palisade status` and `policy apply` say so for
    /// every such policy.
    #[arg(long)]
    pub no_l7_proxy: bool,
    /// Run the L7 proxies (the default; kept for scripts that pass it).
    #[arg(long, hide = true, conflicts_with = "no_l7_proxy")]
    pub l7_proxy: bool,
}

pub fn run(a: AgentArgs) -> anyhow::Result<ExitCode> {
    live::init_logs("info");
    if !live::is_root() {
        bail!("palisade agent needs root (BPF, network namespaces); run it with sudo");
    }
    let mut cfg = AgentConfig::default();
    if let Some(f) = &a.config {
        cfg = cfg.with_file(f)?;
    }
    if let Some(v) = a.state_dir {
        cfg.state_dir = v;
    }
    if let Some(v) = a.manifests {
        cfg.manifests_dir = Some(v);
    }
    if let Some(v) = a.socket {
        cfg.socket = Some(v);
    }
    if let Some(v) = a.pin_root {
        cfg.pin_root = v;
    }
    if let Some(v) = a.node_netns {
        cfg.node_netns = v;
    }
    if let Some(v) = a.node_name {
        cfg.node_name = v;
    }
    if let Some(v) = a.pod_cidr {
        cfg.pod_cidr = PodCidr::parse(&v)?;
        cfg.node_address = cfg.pod_cidr.gateway();
    }
    match a.web_listen.as_deref() {
        Some("off") => cfg.web_listen = None,
        Some(v) => {
            cfg.web_listen = Some(
                v.parse()
                    .with_context(|| format!("--web-listen {v:?}: use ADDRESS:PORT or off"))?,
            )
        }
        None if cfg.web_listen.is_none() => {
            cfg.web_listen = palisade_agent::flows::DEFAULT_WEB_LISTEN.parse().ok()
        }
        None => {}
    }
    if !a.no_l7_proxy {
        cfg.l7_proxy = Some(palisade_proxy::ProxyConfig::default());
    }
    live::install_stop_signals();
    let agent = Agent::start(cfg).context("starting the agent")?;
    eprintln!(
        "palisade agent running: node {} (netns {}), API {}, flows web {}",
        agent.config().node_name,
        agent.config().node_netns,
        agent
            .config()
            .socket
            .as_ref()
            .map(|s| s.display().to_string())
            .unwrap_or_else(|| "-".into()),
        agent
            .web_addr()
            .map(|a| format!("http://{a}/"))
            .unwrap_or_else(|| "off".into())
    );
    while !live::stopping() {
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!("stopping; pods, the pinned datapath and the L7 proxy process stay in place");
    agent.shutdown();
    Ok(ExitCode::SUCCESS)
}
