//! The cluster state that policies are resolved against: namespaces, pods,
//! nodes, services and CIDR groups.

use crate::api::{Cidr, Protocol};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub node_name: Option<String>,
    pub ports: Vec<ContainerPort>,
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
}

impl Pod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub addresses: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `None` for a service without a selector.
    pub selector: Option<BTreeMap<String, String>>,
    pub ports: Vec<ServicePort>,
    pub cluster_ip: Option<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CidrGroup {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub cidrs: Vec<Cidr>,
}

/// Everything the resolver needs to know about the cluster.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterState {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<String, Pod>,
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<String, Service>,
    pub cidr_groups: BTreeMap<String, CidrGroup>,
}

impl ClusterState {
    pub fn pod(&self, key: &str) -> Option<&Pod> {
        self.pods.get(key)
    }

    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.pods
            .values()
            .find(|p| !p.host_network && p.ips.contains(&ip))
    }

    pub fn node_by_ip(&self, ip: IpAddr) -> Option<&Node> {
        self.nodes.values().find(|n| n.addresses.contains(&ip))
    }

    /// Labels of a namespace; a namespace that was not declared still has
    /// the label the API server sets.
    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        match self.namespaces.get(ns) {
            Some(n) => n.labels.clone(),
            None => [("kubernetes.io/metadata.name".to_string(), ns.to_string())].into(),
        }
    }
}
