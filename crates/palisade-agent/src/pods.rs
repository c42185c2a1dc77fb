//! The local pod runtime's records: one per pod, persisted in
//! `<state_dir>/pods.json` so pods survive an agent restart.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use palisade_policy::api::Protocol;
use palisade_policy::cluster::{ContainerPort, Pod};
use serde::{Deserialize, Serialize};

use crate::api::PortSpec;
use crate::error::{AgentError, Result};

/// A pod run by this agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Ports.
    pub ports: Vec<PortSpec>,
    /// Service account.
    pub service_account: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// Endpoint id.
    pub ep_id: u32,
    /// Network namespace.
    pub netns: String,
    /// Host-side veth (in the node namespace).
    pub host_ifname: String,
}

impl PodRecord {
    /// `NAMESPACE/NAME`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The cluster Pod object, merged over a declared one (from manifests)
    /// if there is one: the runtime's address and node, labels merged.
    pub fn to_pod(&self, node: &str, declared: Option<&Pod>) -> Pod {
        let ports: Vec<ContainerPort> = self
            .ports
            .iter()
            .map(|p| ContainerPort {
                name: p.name.clone(),
                port: p.port,
                protocol: Protocol::parse(&p.protocol).unwrap_or(Protocol::TCP),
            })
            .collect();
        match declared {
            Some(d) => {
                let mut pod = d.clone();
                pod.labels.extend(self.labels.clone());
                if !ports.is_empty() {
                    pod.ports = ports;
                }
                pod.ips = vec![self.ip.into()];
                pod.node_name = Some(node.to_string());
                pod.host_network = false;
                pod
            }
            None => Pod {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                labels: self.labels.clone(),
                service_account: self.service_account.clone(),
                node_name: Some(node.to_string()),
                ports,
                ips: vec![self.ip.into()],
                host_network: false,
            },
        }
    }
}

fn dns_label(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(AgentError::Conflict(format!(
            "invalid {what} {s:?}: use lowercase letters, digits and '-', at most 63 characters"
        )))
    }
}

/// Checks a pod's namespace, name and labels.
pub fn validate(namespace: &str, name: &str, labels: &BTreeMap<String, String>) -> Result<()> {
    dns_label("namespace", namespace)?;
    dns_label("pod name", name)?;
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 253
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b));
        let value_ok = v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !key_ok || !value_ok {
            return Err(AgentError::Conflict(format!("invalid label {k}={v}")));
        }
    }
    Ok(())
}

/// Parses `k=v,k2=v2`.
pub fn parse_labels(s: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("label {part:?} is not key=value"))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_names() {
        let l = parse_labels("app=web, role=frontend").expect("ok");
        assert_eq!(l.len(), 2);
        assert!(parse_labels("app").is_err());
        assert!(validate("default", "web-1", &l).is_ok());
        assert!(validate("Default", "web", &l).is_err());
        assert!(validate("default", "-web", &l).is_err());
    }
}
