//! Shared test harness: agents with uniquely named node namespaces, pin
//! roots and state directories, removed on drop (also on panic).
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use palisade_agent::config::PodCidr;
use palisade_agent::{Agent, AgentConfig, PodRunSpec};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub const T: Duration = Duration::from_millis(400);

/// Names of one test's private resources.
#[derive(Debug, Clone)]
pub struct Names {
    pub node_netns: String,
    pub pin_root: PathBuf,
    pub state_dir: PathBuf,
}

impl Names {
    pub fn new(what: &str) -> Names {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}-{n}", std::process::id());
        Names {
            node_netns: format!("pal-{what}-{tag}"),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/palisade-agent-test-{tag}")),
            state_dir: std::env::temp_dir().join(format!("palisade-agent-test-{tag}")),
        }
    }

    pub fn config(&self, node: &str, cidr: &str) -> AgentConfig {
        let pod_cidr = PodCidr::parse(cidr).expect("cidr");
        AgentConfig {
            state_dir: self.state_dir.clone(),
            manifests_dir: None,
            socket: None,
            pin_root: self.pin_root.clone(),
            node_netns: self.node_netns.clone(),
            node_name: node.to_string(),
            node_address: pod_cidr.gateway(),
            pod_cidr,
            watch_interval: Duration::from_millis(50),
            ..AgentConfig::default()
        }
    }
}

/// Removes everything of `names` on drop.
pub struct Cleanup(pub Names);

impl Drop for Cleanup {
    fn drop(&mut self) {
        palisade_agent::purge(&self.0.node_netns, &self.0.pin_root);
        let _ = std::fs::remove_dir_all(&self.0.state_dir);
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn pod(agent: &Agent, ns: &str, name: &str, labels: &[(&str, &str)]) -> (String, Ipv4Addr) {
    let info = agent
        .run_pod(PodRunSpec {
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
        .expect("pod run");
    (info.netns, info.ip)
}
