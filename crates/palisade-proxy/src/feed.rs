//! The policy feed: how the agent tells a separately running proxy which
//! policy to enforce.
//!
//! The agent writes a JSON [`PolicyFeed`] snapshot to a file in its state
//! directory **atomically** (write `<file>.tmp`, then `rename` over the
//! file). The proxy polls the file's identity (inode, size, mtime) and, when
//! it changes, rebuilds an [`Engine`] from the same manifest texts the agent
//! accepted. Resolution is deterministic, so the proxy's per-endpoint maps
//! equal the agent's. An invalid snapshot is rejected whole and the previous
//! policy stays in force.
//!
//! ```json
//! {
//!   "revision": 7,
//!   "localNode": "node-1",
//!   "endpoints": [{"pod": "default/frontend", "ips": ["10.0.1.10"], "netns": "palisade-pod-1"}],
//!   "manifests": ["apiVersion: v1\nkind: Pod\n..."],
//!   "options": {"enableNodeSelectorLabels": false, "enableExtendedIpProtocols": false}
//! }
//! ```
//!
//! `endpoints[].ips` override the `status.podIP(s)` of the matching Pod
//! manifest: the agent's IPAM is authoritative for addresses. The proxy can
//! also run standalone from a manifest directory ([`FeedSource::ManifestDir`]).

use crate::error::ProxyError;
use crate::snapshot::PolicySnapshot;
use palisade_policy::engine::Engine;
use palisade_policy::manifest::{Object, Options, parse_file};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One snapshot of what the proxy enforces.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PolicyFeed {
    /// The agent's policy revision (informational; the proxy counts its own).
    pub revision: Option<u64>,
    /// Only pods on this node are endpoints (`None`: every pod).
    pub local_node: Option<String>,
    /// The local endpoints and their addresses.
    pub endpoints: Vec<FeedEndpoint>,
    /// The accepted manifest texts (YAML or JSON, multi-document allowed).
    pub manifests: Vec<String>,
    pub options: FeedOptions,
}

/// A local endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FeedEndpoint {
    /// `namespace/name`.
    pub pod: String,
    pub ips: Vec<IpAddr>,
    /// The pod's network namespace (informational).
    pub netns: Option<String>,
}

/// Agent options that change what manifests are valid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FeedOptions {
    pub enable_node_selector_labels: bool,
    pub enable_extended_ip_protocols: bool,
}

impl PolicyFeed {
    /// Parses a snapshot file's text.
    pub fn from_json(name: &str, text: &str) -> Result<PolicyFeed, ProxyError> {
        serde_json::from_str(text).map_err(|e| ProxyError::FeedFormat {
            path: name.to_string(),
            message: e.to_string(),
        })
    }

    /// Writes the snapshot atomically (`<path>.tmp` then rename): what the
    /// agent does.
    pub fn write_atomically(&self, path: &Path) -> Result<(), ProxyError> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| ProxyError::FeedFormat {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let io = |source| ProxyError::Read {
            path: path.to_path_buf(),
            source,
        };
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Decodes the manifests and resolves them; any invalid document
    /// rejects the whole snapshot.
    pub fn build(&self, revision: u64) -> Result<PolicySnapshot, ProxyError> {
        let opts = Options {
            enable_node_selector_labels: self.options.enable_node_selector_labels,
            enable_extended_ip_protocols: self.options.enable_extended_ip_protocols,
        };
        let ips: BTreeMap<&str, &Vec<IpAddr>> = self
            .endpoints
            .iter()
            .map(|e| (e.pod.as_str(), &e.ips))
            .collect();
        let mut objects = Vec::new();
        let mut errors = Vec::new();
        for (i, text) in self.manifests.iter().enumerate() {
            for doc in parse_file(&format!("manifests[{i}]"), text, &opts) {
                errors.extend(doc.errors.iter().map(|e| e.to_string()));
                match doc.object {
                    Some(Object::Skipped { .. }) | None => {}
                    Some(Object::Pod(mut p)) => {
                        if let Some(ips) = ips.get(p.key().as_str())
                            && !ips.is_empty()
                        {
                            p.ips = (*ips).clone();
                        }
                        objects.push(Object::Pod(p));
                    }
                    Some(o) => objects.push(o),
                }
            }
        }
        if let Some(first) = errors.first() {
            return Err(ProxyError::Manifests {
                count: errors.len(),
                first: first.clone(),
            });
        }
        let mut engine = Engine::from_objects(objects);
        if self.local_node.is_some() {
            engine.set_local_node(self.local_node.clone());
        }
        for w in engine.warnings() {
            tracing::warn!(target: "palisade::proxy", "policy warning: {w}");
        }
        Ok(PolicySnapshot::new(engine, revision))
    }
}

/// Where the proxy reads its policy from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedSource {
    /// A [`PolicyFeed`] JSON file, replaced atomically by the agent.
    File(PathBuf),
    /// A directory of manifests (standalone use), read recursively.
    ManifestDir {
        dir: PathBuf,
        local_node: Option<String>,
    },
}

/// A cheap fingerprint of the feed's files: when it changes, reload.
pub type Fingerprint = Vec<(PathBuf, u64, u64, Option<SystemTime>)>;

impl FeedSource {
    /// The current fingerprint (files, inodes, sizes, mtimes).
    pub fn fingerprint(&self) -> Result<Fingerprint, ProxyError> {
        let mut out = Vec::new();
        match self {
            FeedSource::File(p) => out.push(stat(p)?),
            FeedSource::ManifestDir { dir, .. } => {
                for f in manifest_files(dir)? {
                    out.push(stat(&f)?);
                }
            }
        }
        Ok(out)
    }

    /// Reads the feed.
    pub fn read(&self) -> Result<PolicyFeed, ProxyError> {
        match self {
            FeedSource::File(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ProxyError::Read {
                    path: p.clone(),
                    source,
                })?;
                PolicyFeed::from_json(&p.display().to_string(), &text)
            }
            FeedSource::ManifestDir { dir, local_node } => {
                let mut manifests = Vec::new();
                for f in manifest_files(dir)? {
                    manifests.push(std::fs::read_to_string(&f).map_err(|source| {
                        ProxyError::Read {
                            path: f.clone(),
                            source,
                        }
                    })?);
                }
                Ok(PolicyFeed {
                    local_node: local_node.clone(),
                    manifests,
                    ..Default::default()
                })
            }
        }
    }
}

fn stat(p: &Path) -> Result<(PathBuf, u64, u64, Option<SystemTime>), ProxyError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).map_err(|source| ProxyError::Read {
        path: p.to_path_buf(),
        source,
    })?;
    Ok((p.to_path_buf(), m.ino(), m.len(), m.modified().ok()))
}

/// Every `.yaml`, `.yml` and `.json` file below `dir`, sorted (or `dir`
/// itself when it is a file).
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ProxyError> {
    if dir.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ProxyError> {
        let rd = std::fs::read_dir(dir).map_err(|source| ProxyError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        for entry in rd.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    out.sort();
    Ok(out)
}
