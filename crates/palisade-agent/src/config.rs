//! The agent's configuration: defaults that work on one machine, an optional
//! YAML/JSON config file, and command-line overrides (applied by the binary).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{AgentError, Result};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/palisade";
/// Default manifests directory (watched).
pub const DEFAULT_MANIFESTS_DIR: &str = "/etc/palisade/manifests";
/// Default API socket.
pub const DEFAULT_SOCKET: &str = "/run/palisade/agent.sock";
/// Default pin root.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/palisade";
/// Default node network namespace.
pub const DEFAULT_NODE_NETNS: &str = "palisade-node";
/// Default pod CIDR of this node.
pub const DEFAULT_POD_CIDR: &str = "10.200.0.0/24";

/// An IPv4 CIDR (`10.200.0.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodCidr {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length (8..=30).
    pub len: u8,
}

impl PodCidr {
    /// Parses `a.b.c.d/len`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |m: &str| AgentError::Format {
            context: format!("pod CIDR {s:?}"),
            message: m.to_string(),
        };
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/LEN"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad("invalid IPv4 address"))?;
        let len: u8 = l.parse().map_err(|_| bad("invalid prefix length"))?;
        if !(8..=30).contains(&len) {
            return Err(bad("prefix length must be 8..=30"));
        }
        let mask = u32::MAX << (32 - u32::from(len));
        Ok(PodCidr {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        })
    }

    /// Number of addresses.
    pub fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.len))
    }

    /// The `i`-th address of the block.
    pub fn nth(&self, i: u32) -> Option<Ipv4Addr> {
        (i < self.size()).then(|| Ipv4Addr::from(u32::from(self.network) + i))
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - u32::from(self.len));
        u32::from(ip) & mask == u32::from(self.network)
    }

    /// The node's own (gateway) address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
}

impl std::fmt::Display for PodCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

/// Everything the agent needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Persistent state: pods, IPAM, API-applied objects, last good manifests.
    pub state_dir: PathBuf,
    /// Watched manifests directory (`None`: API only).
    pub manifests_dir: Option<PathBuf>,
    /// API socket (`None`: no socket, in-process use only).
    pub socket: Option<PathBuf>,
    /// bpffs pin root of the datapath.
    pub pin_root: PathBuf,
    /// The node network namespace standing in for the host.
    pub node_netns: String,
    /// This node's name (the synthesised Node object).
    pub node_name: String,
    /// The node's address; defaults to the pod CIDR's gateway address.
    pub node_address: Ipv4Addr,
    /// The node's pod CIDR (IPAM).
    pub pod_cidr: PodCidr,
    /// Maximum policy entries per endpoint.
    pub policy_capacity: usize,
    /// How often the manifests directory is polled (its files' sizes and
    /// mtimes: cheap). A change is applied once it has been stable for one
    /// interval, so a file caught mid-write is never applied; apply-to-enforced
    /// for file changes is therefore at most two intervals plus the apply.
    pub watch_interval: Duration,
    /// How often conntrack is garbage-collected.
    pub gc_interval: Duration,
    /// Feature flags that change what is valid.
    pub options: palisade_policy::manifest::Options,
    /// Where the flow web endpoints listen (`None`: not served). The
    /// `palisade agent` command defaults to loopback port 9962.
    pub web_listen: Option<std::net::SocketAddr>,
    /// Capacity of the ring of recent flows.
    pub flow_ring_capacity: usize,
    /// Run the L7 proxies (`None`: no L7 enforcement by this agent): the
    /// HTTP/gRPC proxy as a supervised process of its own (it survives an
    /// agent restart), the DNS and Kafka proxies inside the agent, all in
    /// the node namespace. Their records become flows; every
    /// reconciliation feeds them the new policy and redirect sets.
    pub l7_proxy: Option<palisade_proxy::ProxyConfig>,
    /// The program whose `proxy` subcommand runs the HTTP/gRPC L7 proxy as
    /// its own process (`None`: this executable, i.e. `palisade`).
    pub proxy_program: Option<PathBuf>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl Default for AgentConfig {
    fn default() -> Self {
        let pod_cidr = PodCidr {
            network: Ipv4Addr::new(10, 200, 0, 0),
            len: 24,
        };
        AgentConfig {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            manifests_dir: Some(PathBuf::from(DEFAULT_MANIFESTS_DIR)),
            socket: Some(PathBuf::from(DEFAULT_SOCKET)),
            pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
            node_netns: DEFAULT_NODE_NETNS.to_string(),
            node_name: hostname(),
            node_address: pod_cidr.gateway(),
            pod_cidr,
            policy_capacity: palisade_datapath::loader::DEFAULT_POLICY_CAPACITY,
            watch_interval: Duration::from_millis(50),
            gc_interval: Duration::from_secs(5),
            options: Default::default(),
            web_listen: None,
            flow_ring_capacity: crate::flows::DEFAULT_FLOW_RING_CAPACITY,
            l7_proxy: None,
            proxy_program: None,
        }
    }
}

/// The config file: every field optional (YAML or JSON).
///
/// ```yaml
/// nodeName: node-1
/// nodeNetns: palisade-node
/// podCIDR: 10.200.0.0/24
/// nodeAddress: 10.200.0.1
/// stateDir: /var/lib/palisade
/// manifestsDir: /etc/palisade/manifests
/// socket: /run/palisade/agent.sock
/// pinRoot: /sys/fs/bpf/palisade
/// policyCapacity: 16384
/// gcIntervalSeconds: 5
/// enableNodeSelectorLabels: false
/// enableExtendedIpProtocols: false
/// webListen: 127.0.0.1:9962
/// flowRingCapacity: 65536
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    /// Node name.
    pub node_name: Option<String>,
    /// Node namespace.
    pub node_netns: Option<String>,
    /// Pod CIDR.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    /// Node address.
    pub node_address: Option<String>,
    /// State dir.
    pub state_dir: Option<PathBuf>,
    /// Manifests dir.
    pub manifests_dir: Option<PathBuf>,
    /// Socket.
    pub socket: Option<PathBuf>,
    /// Pin root.
    pub pin_root: Option<PathBuf>,
    /// Capacity.
    pub policy_capacity: Option<usize>,
    /// GC interval.
    pub gc_interval_seconds: Option<u64>,
    /// Feature flag.
    pub enable_node_selector_labels: Option<bool>,
    /// Feature flag.
    pub enable_extended_ip_protocols: Option<bool>,
    /// Web endpoints address.
    pub web_listen: Option<String>,
    /// Flow ring capacity.
    pub flow_ring_capacity: Option<usize>,
}

impl AgentConfig {
    /// Applies a config file on top of `self`.
    pub fn with_file(mut self, path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AgentError::io(format!("reading config {}", path.display()), e))?;
        let f: ConfigFile = serde_saphyr::from_str(&text).map_err(|e| AgentError::Format {
            context: format!("config {}", path.display()),
            message: e.to_string(),
        })?;
        if let Some(v) = f.node_name {
            self.node_name = v;
        }
        if let Some(v) = f.node_netns {
            self.node_netns = v;
        }
        if let Some(v) = f.pod_cidr {
            self.pod_cidr = PodCidr::parse(&v)?;
            self.node_address = self.pod_cidr.gateway();
        }
        if let Some(v) = f.node_address {
            self.node_address = v.parse().map_err(|_| AgentError::Format {
                context: format!("config {}", path.display()),
                message: format!("nodeAddress {v:?} is not an IPv4 address"),
            })?;
        }
        if let Some(v) = f.state_dir {
            self.state_dir = v;
        }
        if let Some(v) = f.manifests_dir {
            self.manifests_dir = Some(v);
        }
        if let Some(v) = f.socket {
            self.socket = Some(v);
        }
        if let Some(v) = f.pin_root {
            self.pin_root = v;
        }
        if let Some(v) = f.policy_capacity {
            self.policy_capacity = v;
        }
        if let Some(v) = f.gc_interval_seconds {
            self.gc_interval = Duration::from_secs(v.max(1));
        }
        if let Some(v) = f.enable_node_selector_labels {
            self.options.enable_node_selector_labels = v;
        }
        if let Some(v) = f.enable_extended_ip_protocols {
            self.options.enable_extended_ip_protocols = v;
        }
        if let Some(v) = f.web_listen {
            self.web_listen = Some(v.parse().map_err(|_| AgentError::Format {
                context: format!("config {}", path.display()),
                message: format!("webListen {v:?} is not ADDRESS:PORT"),
            })?);
        }
        if let Some(v) = f.flow_ring_capacity {
            self.flow_ring_capacity = v.max(1);
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse() {
        let c = PodCidr::parse("10.200.0.7/24").expect("valid");
        assert_eq!(c.network, Ipv4Addr::new(10, 200, 0, 0));
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 200, 0, 1));
        assert!(c.contains(Ipv4Addr::new(10, 200, 0, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 200, 1, 0)));
        assert!(PodCidr::parse("10.0.0.0/33").is_err());
        assert!(PodCidr::parse("nope").is_err());
    }
}
