//! The agent API: one JSON object per line over a unix socket (mode 0600,
//! root only). Each request line gets exactly one response line; a
//! connection may carry several requests.
//!
//! ```text
//! > {"op":"status"}
//! < {"ok":true,"result":{"nodeName":"node-1","datapathLoaded":true,...}}
//! > {"op":"policy-apply","files":[{"name":"p.yaml","text":"apiVersion: ..."}]}
//! < {"ok":false,"error":"rejected: 1 error in the change; ...","diagnostics":["p.yaml:7:9: spec.ingress[0]: ..."]}
//! ```
//!
//! Operations (`op`): `status`, `endpoint-list`, `bpf-policy-get {pod}`,
//! `policy-apply {files}`, `policy-delete {files}`, `pod-run {namespace, name,
//! labels, ports, ip?, serviceAccount?}`, `pod-delete {pod}`, `pod-list`,
//! `pod-netns {pod}`, `events {since}`, `flows {since?, last?}`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};
use crate::sources::SourceFile;

/// A container port of a pod (`http:80/TCP`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// Port name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Port number.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

impl PortSpec {
    /// Parses `[name:]port[/PROTO]`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let (name, rest) = match s.split_once(':') {
            Some((n, r)) => (Some(n.to_string()), r),
            None => (None, s),
        };
        let (port, proto) = match rest.split_once('/') {
            Some((p, pr)) => (p, pr.to_ascii_uppercase()),
            None => (rest, "TCP".to_string()),
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("invalid port {port:?} in {s:?} (use name:80/TCP)"))?;
        if port == 0 {
            return Err(format!("port 0 in {s:?}"));
        }
        if !["TCP", "UDP", "SCTP"].contains(&proto.as_str()) {
            return Err(format!("protocol {proto:?} in {s:?}: use TCP, UDP or SCTP"));
        }
        Ok(PortSpec {
            name,
            port,
            protocol: proto,
        })
    }
}

/// What `pod run` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRunSpec {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Container ports.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// An explicit address (default: the next free one of the pod CIDR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// Service account (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// A request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Agent and datapath status.
    Status,
    /// The endpoints.
    EndpointList,
    /// The live kernel policy map of one endpoint.
    BpfPolicyGet {
        /// `NAMESPACE/POD`.
        pod: String,
    },
    /// Apply manifests (validated as one change).
    PolicyApply {
        /// The files.
        files: Vec<SourceFile>,
    },
    /// Delete the objects the manifests name.
    PolicyDelete {
        /// The files.
        files: Vec<SourceFile>,
    },
    /// Run a pod.
    PodRun(PodRunSpec),
    /// Delete a pod.
    PodDelete {
        /// `NAMESPACE/POD`.
        pod: String,
    },
    /// The pods.
    PodList,
    /// The network namespace of a pod (for `pod exec`).
    PodNetns {
        /// `NAMESPACE/POD`.
        pod: String,
    },
    /// Policy verdict and drop events after sequence number `since`.
    Events {
        /// Last sequence number seen (0: all kept).
        #[serde(default)]
        since: u64,
    },
    /// Hubble-shaped flows from the ring: from sequence `since` on (a
    /// `lost_events` record first if some were overwritten), else the last
    /// `last` (all when absent). The result carries `next` for polling.
    Flows {
        /// First sequence number wanted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// At most this many (the most recent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last: Option<usize>,
    },
    /// The DNS proxy's FQDN cache (`palisade fqdn cache list`): one row
    /// per (endpoint, name).
    FqdnCacheList,
}

/// A response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// Success.
    pub ok: bool,
    /// The result (on success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The error (on failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Located validation errors (`file:line:col: field: message`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<String>,
}

impl Response {
    /// A success.
    pub fn ok<T: Serialize>(v: &T) -> Self {
        match serde_json::to_value(v) {
            Ok(v) => Response {
                ok: true,
                result: Some(v),
                error: None,
                diagnostics: vec![],
            },
            Err(e) => Response::err(format!("encoding the result: {e}"), vec![]),
        }
    }

    /// A failure.
    pub fn err(error: String, diagnostics: Vec<String>) -> Self {
        Response {
            ok: false,
            result: None,
            error: Some(error),
            diagnostics,
        }
    }
}

/// `palisade status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusInfo {
    /// Node name.
    pub node_name: String,
    /// Node network namespace.
    pub node_netns: String,
    /// Node address.
    pub node_address: String,
    /// Pod CIDR.
    pub pod_cidr: String,
    /// Pin root.
    pub pin_root: String,
    /// Whether the datapath programs and pinned maps are loaded.
    pub datapath_loaded: bool,
    /// Global policy revision of the datapath.
    pub policy_revision: u64,
    /// Endpoints (local pods).
    pub endpoints: usize,
    /// Endpoints in error.
    pub endpoints_in_error: usize,
    /// Policies enforced.
    pub policies: usize,
    /// Identities known.
    pub identities: usize,
    /// ipcache entries.
    pub ipcache_entries: usize,
    /// Successful reconciliations so far.
    pub reconciliations: u64,
    /// Manifest directory (if watched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests_dir: Option<String>,
    /// Changes of the manifests directory processed (accepted or rejected).
    pub manifests_generation: u64,
    /// The last rejected manifests-directory change, while it is not fixed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests_errors: Vec<String>,
    /// Engine warnings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The HTTP/gRPC proxy process, when the agent runs L7 proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7_proxy: Option<L7ProxyInfo>,
}

/// The L7 proxy process as the agent sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L7ProxyInfo {
    pub pid: u32,
    pub running: bool,
    /// Times the agent had to start it again.
    pub restarts: u64,
    /// The feed revision the agent wrote last.
    pub feed_revision: u64,
    /// What the proxy reports (its status file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<palisade_proxy::ProxyStatus>,
}

/// One row of `palisade endpoint list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRow {
    /// Endpoint id.
    pub id: u32,
    /// `NAMESPACE/POD`.
    pub pod: String,
    /// Ingress default deny in force.
    pub ingress_enforced: bool,
    /// Egress default deny in force.
    pub egress_enforced: bool,
    /// Identity.
    pub identity: u32,
    /// Identity labels.
    pub labels: Vec<String>,
    /// Address.
    pub ipv4: String,
    /// `ready`, `not-ready: ...` or `error: ...`.
    pub status: String,
    /// Policy entries in the kernel map.
    pub policy_entries: usize,
}

/// One row of `palisade bpf policy get`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BpfPolicyRow {
    /// `Allow`, `Deny` or `Redirect`.
    pub policy: String,
    /// `Ingress` or `Egress`.
    pub direction: String,
    /// Identity (0 = any).
    pub identity: u32,
    /// Labels of the identity (`reserved:world`, `k8s:app=db`, `ANY`).
    pub labels: String,
    /// `80/TCP`, `TCP`, `ANY`.
    pub port: String,
    /// Proxy port (0: none).
    pub proxy_port: u16,
    /// Precedence.
    pub precedence: u32,
    /// Rule cookie.
    pub cookie: u32,
    /// The deciding rules (`CiliumNetworkPolicy/ns/name spec.ingress[0]`).
    pub rules: Vec<String>,
}

/// The answer of `bpf-policy-get`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BpfPolicy {
    /// Endpoint id.
    pub endpoint: u32,
    /// Pod.
    pub pod: String,
    /// Rows read from the live kernel map.
    pub entries: Vec<BpfPolicyRow>,
    /// Whether the kernel map equals the engine's desired map.
    pub in_sync: bool,
    /// Packets per verdict/direction (from the endpoint counters).
    pub counters: Vec<String>,
}

/// One pod of `palisade pod list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    /// `NAMESPACE/POD`.
    pub pod: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Endpoint id.
    pub endpoint: u32,
    /// Its network namespace.
    pub netns: String,
    /// Host-side veth.
    pub host_ifname: String,
    /// Endpoint status.
    pub status: String,
}

/// What `policy apply` did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    /// Objects applied (or deleted).
    pub objects: Vec<String>,
    /// Objects named that were not found (delete).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_found: Vec<String>,
    /// Engine warnings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Endpoints whose new policy could not be written (they keep their last good entries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_errors: Vec<String>,
}

/// A policy verdict or drop event, attributed to its rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowEvent {
    /// Sequence number (increasing).
    pub seq: u64,
    /// `NAMESPACE/POD` of the endpoint (or `endpoint <id>`).
    pub endpoint: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `forwarded`, `dropped` or `redirected`.
    pub verdict: String,
    /// 0, 133 (policy denied) or 181 (policy deny).
    pub drop_reason: u16,
    /// IP protocol.
    pub proto: u8,
    /// Source.
    pub src: String,
    /// Destination.
    pub dst: String,
    /// Destination port (ICMP: type).
    pub dport: u16,
    /// Remote identity.
    pub remote_identity: u32,
    /// Rule cookie.
    pub cookie: u32,
    /// The rule the cookie leads to, or the default-deny explanation.
    pub rule: String,
}

/// A client of the agent API.
#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client for `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            timeout: Duration::from_secs(60),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn api_err(&self, message: String) -> AgentError {
        AgentError::Api {
            socket: self.socket.display().to_string(),
            message,
        }
    }

    /// Sends one request and returns the raw response.
    pub fn call(&self, req: &Request) -> Result<Response> {
        let mut stream = UnixStream::connect(&self.socket).map_err(|e| {
            self.api_err(format!(
                "cannot connect ({e}); is `palisade agent` running (and are you root)?"
            ))
        })?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|e| self.api_err(e.to_string()))?;
        let mut line = serde_json::to_string(req).map_err(|e| self.api_err(e.to_string()))?;
        line.push('\n');
        stream
            .write_all(line.as_bytes())
            .map_err(|e| self.api_err(format!("sending: {e}")))?;
        let mut reader = BufReader::new(stream);
        let mut resp = String::new();
        reader
            .read_line(&mut resp)
            .map_err(|e| self.api_err(format!("reading the response: {e}")))?;
        if resp.is_empty() {
            return Err(self.api_err("the agent closed the connection".into()));
        }
        serde_json::from_str(&resp).map_err(|e| self.api_err(format!("bad response: {e}")))
    }

    /// Sends a request and decodes a successful result as `T`; a failure
    /// becomes [`AgentError::Invalid`] (with diagnostics) or [`AgentError::Api`].
    pub fn request<T: for<'de> Deserialize<'de>>(&self, req: &Request) -> Result<T> {
        let resp = self.call(req)?;
        if !resp.ok {
            let error = resp.error.unwrap_or_else(|| "unknown error".into());
            if !resp.diagnostics.is_empty() {
                return Err(AgentError::Invalid {
                    summary: error,
                    diagnostics: resp.diagnostics,
                });
            }
            return Err(self.api_err(error));
        }
        let v = resp.result.unwrap_or(serde_json::Value::Null);
        serde_json::from_value(v).map_err(|e| self.api_err(format!("bad result: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        let r: Request =
            serde_json::from_str(r#"{"op":"bpf-policy-get","pod":"default/a"}"#).expect("decodes");
        assert!(matches!(r, Request::BpfPolicyGet { pod } if pod == "default/a"));
        let s = serde_json::to_string(&Request::Status).expect("encodes");
        assert_eq!(s, r#"{"op":"status"}"#);
        let r: Request = serde_json::from_str(
            r#"{"op":"pod-run","namespace":"default","name":"a","labels":{"app":"x"}}"#,
        )
        .expect("decodes");
        assert!(matches!(r, Request::PodRun(s) if s.labels.len() == 1));
    }

    #[test]
    fn port_spec() {
        assert_eq!(
            PortSpec::parse("http:80/TCP").expect("ok"),
            PortSpec {
                name: Some("http".into()),
                port: 80,
                protocol: "TCP".into()
            }
        );
        assert_eq!(PortSpec::parse("53/udp").expect("ok").protocol, "UDP");
        assert!(PortSpec::parse("x:0").is_err());
        assert!(PortSpec::parse("x:80/ICMP").is_err());
    }
}
