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

    /// The Pod as a Kubernetes manifest (JSON) that decodes back to `self`.
    pub fn to_manifest(&self) -> serde_json::Value {
        let ports: Vec<serde_json::Value> = self
            .ports
            .iter()
            .map(|p| {
                let mut v = serde_json::json!({"containerPort": p.port, "protocol": p.protocol.to_string()});
                if let Some(n) = &p.name {
                    v["name"] = n.clone().into();
                }
                v
            })
            .collect();
        let mut spec = serde_json::json!({
            "serviceAccountName": self.service_account,
            "hostNetwork": self.host_network,
            "containers": [{"name": "main", "ports": ports}],
        });
        if let Some(n) = &self.node_name {
            spec["nodeName"] = n.clone().into();
        }
        let ips: Vec<serde_json::Value> = self
            .ips
            .iter()
            .map(|ip| serde_json::json!({"ip": ip.to_string()}))
            .collect();
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": self.labels},
            "spec": spec,
            "status": {"podIPs": ips},
        })
    }
}

impl Namespace {
    /// The Namespace as a Kubernetes manifest (JSON) that decodes back to `self`.
    pub fn to_manifest(&self) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": self.name, "labels": self.labels},
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub addresses: Vec<IpAddr>,
}

impl Node {
    /// The Node as a Kubernetes manifest (JSON) that decodes back to `self`.
    pub fn to_manifest(&self) -> serde_json::Value {
        let addresses: Vec<serde_json::Value> = self
            .addresses
            .iter()
            .map(|a| serde_json::json!({"type": "InternalIP", "address": a.to_string()}))
            .collect();
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": self.labels},
            "status": {"addresses": addresses},
        })
    }
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

#[cfg(test)]
mod manifest_round_trip {
    use super::*;
    use crate::manifest::{Object, Options, parse_file};

    fn decode(v: serde_json::Value) -> Object {
        let docs = parse_file("rendered.json", &v.to_string(), &Options::default());
        assert_eq!(docs.len(), 1);
        assert!(docs[0].errors.is_empty(), "{:?}", docs[0].errors);
        docs[0].object.clone().expect("an object")
    }

    #[test]
    fn rendered_cluster_objects_decode_to_themselves() {
        let pod = Pod {
            namespace: "shop".into(),
            name: "web-1".into(),
            labels: BTreeMap::from([("app".into(), "web".into()), ("tier".into(), "fe".into())]),
            service_account: "web-sa".into(),
            node_name: Some("node-a".into()),
            ports: vec![
                ContainerPort {
                    name: Some("http".into()),
                    port: 8080,
                    protocol: Protocol::TCP,
                },
                ContainerPort {
                    name: None,
                    port: 53,
                    protocol: Protocol::UDP,
                },
            ],
            ips: vec!["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()],
            host_network: false,
        };
        assert!(matches!(decode(pod.to_manifest()), Object::Pod(p) if p == pod));
        let bare = Pod {
            node_name: None,
            ports: vec![],
            ips: vec![],
            labels: BTreeMap::new(),
            service_account: "default".into(),
            host_network: true,
            ..pod
        };
        assert!(matches!(decode(bare.to_manifest()), Object::Pod(p) if p == bare));
        let ns = Namespace {
            name: "shop".into(),
            labels: BTreeMap::from([
                ("kubernetes.io/metadata.name".into(), "shop".into()),
                ("palisade.io/audit".into(), "true".into()),
            ]),
        };
        assert!(matches!(decode(ns.to_manifest()), Object::Namespace(n) if n == ns));
        let node = Node {
            name: "node-a".into(),
            labels: BTreeMap::from([("kubernetes.io/hostname".into(), "node-a".into())]),
            addresses: vec!["192.0.2.1".parse().unwrap()],
        };
        assert!(matches!(decode(node.to_manifest()), Object::Node(n) if n == node));
    }
}
