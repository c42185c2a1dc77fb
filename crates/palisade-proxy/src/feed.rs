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
//!   "files": [{"name": "/etc/palisade/manifests/shop.yaml", "text": "..."}],
//!   "documents": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
//!                 {"file": 0, "index": 2}],
//!   "fqdns": [{"name": "api.example.com", "ips": ["192.0.2.7"]}],
//!   "options": {"enableNodeSelectorLabels": false, "enableExtendedIpProtocols": false}
//! }
//! ```
//!
//! The objects are every document of `manifests`, then `documents` in
//! order: a `{"file", "index"}` reference takes document `index` of
//! `files[file]` (so each object is decoded from the very text the agent
//! accepted, diagnostics naming the original file), anything else is an
//! inline manifest. Audited policies (`palisade.io/audit`) are left out, as
//! the agent leaves them out of what the datapath enforces; `fqdns` are the
//! names the DNS proxy learned. `endpoints[].ips` override the
//! `status.podIP(s)` of the matching Pod: the agent's IPAM is authoritative
//! for addresses. The proxy can also run standalone from a manifest
//! directory ([`FeedSource::ManifestDir`]).

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
    /// Source files that `documents` refer to.
    pub files: Vec<FeedFile>,
    /// Objects after those of `manifests`, in the order the agent applied them.
    pub documents: Vec<FeedDocument>,
    /// Names the DNS proxy learned, with their addresses.
    pub fqdns: Vec<FeedFqdn>,
    pub options: FeedOptions,
}

/// A source file (its text as the agent accepted it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FeedFile {
    pub name: String,
    pub text: String,
}

/// One object of the feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FeedDocument {
    /// Document `index` (as `parse_file` numbers them) of `files[file]`.
    Ref { file: usize, index: usize },
    /// An inline manifest (cluster objects the agent synthesises).
    Inline(serde_json::Value),
}

/// A learned DNS name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FeedFqdn {
    pub name: String,
    pub ips: Vec<IpAddr>,
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

    /// Decodes the objects in order; any invalid document or dangling
    /// reference rejects the whole snapshot.
    pub fn objects(&self) -> Result<Vec<Object>, ProxyError> {
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
        let mut take = |docs: Vec<palisade_policy::manifest::DocResult>,
                        errors: &mut Vec<String>| {
            for doc in docs {
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
        };
        for (i, text) in self.manifests.iter().enumerate() {
            take(
                parse_file(&format!("manifests[{i}]"), text, &opts),
                &mut errors,
            );
        }
        let mut parsed: BTreeMap<usize, Vec<Option<palisade_policy::manifest::DocResult>>> =
            BTreeMap::new();
        for (i, d) in self.documents.iter().enumerate() {
            match d {
                FeedDocument::Ref { file, index } => {
                    let Some(f) = self.files.get(*file) else {
                        errors.push(format!(
                            "documents[{i}]: file {file} does not exist ({} files)",
                            self.files.len()
                        ));
                        continue;
                    };
                    let docs = parsed.entry(*file).or_insert_with(|| {
                        parse_file(&f.name, &f.text, &opts)
                            .into_iter()
                            .map(Some)
                            .collect()
                    });
                    match docs.get_mut(*index).and_then(Option::take) {
                        Some(doc) => take(vec![doc], &mut errors),
                        None => errors.push(format!(
                            "documents[{i}]: {} has no document {index} (or it is referenced twice)",
                            f.name
                        )),
                    }
                }
                FeedDocument::Inline(v) => {
                    let docs = parse_file(&format!("documents[{i}]"), &v.to_string(), &opts);
                    if docs.len() != 1 {
                        errors.push(format!("documents[{i}]: expected one manifest"));
                    }
                    take(docs, &mut errors);
                }
            }
        }
        if let Some(first) = errors.first() {
            return Err(ProxyError::Manifests {
                count: errors.len(),
                first: first.clone(),
            });
        }
        Ok(objects)
    }

    /// Resolves the feed into the policy the proxy enforces: the objects
    /// without audited policies (what the datapath enforces too), then the
    /// learned names.
    pub fn build(&self, revision: u64) -> Result<PolicySnapshot, ProxyError> {
        let objects = self.objects()?;
        let audited = palisade_policy::audit::audited_policies(&objects);
        let mut engine = Engine::new();
        engine.set_local_node(self.local_node.clone());
        if audited.is_empty() {
            engine.apply_all(objects);
        } else {
            engine.apply_all(palisade_policy::audit::enforced_objects(&objects, &audited));
        }
        for f in &self.fqdns {
            for ip in &f.ips {
                engine.learn_fqdn(&f.name, *ip);
            }
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
