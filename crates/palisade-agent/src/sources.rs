//! Where cluster state and policies come from: the watched manifests
//! directory and the API. Every change is parsed and validated as a whole
//! before anything is applied: one invalid document rejects the change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use palisade_policy::manifest::{Object, Options, parse_file};
use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};
use crate::store;

/// One manifest file's name (shown in diagnostics) and text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Name used in `file:line:col` diagnostics.
    pub name: String,
    /// Its text.
    pub text: String,
}

/// A decoded object and the file it came from.
#[derive(Debug, Clone)]
pub struct Sourced {
    /// Identity of the object (`CiliumNetworkPolicy/default/name`, `Pod/ns/name`, ...).
    pub key: String,
    /// The file.
    pub file: String,
    /// Index of the document in the file.
    pub index: usize,
    /// The whole text of the file (shared by its objects): what the L7
    /// proxy process is fed, so it decodes exactly what the agent accepted.
    pub text: std::sync::Arc<str>,
    /// The object.
    pub object: Object,
}

/// The identity of an object: a later object with the same key replaces it.
pub fn object_key(o: &Object) -> Option<String> {
    match o {
        Object::Policy(p) => Some(p.id.to_string()),
        Object::Namespace(n) => Some(format!("Namespace/{}", n.name)),
        Object::Pod(p) => Some(format!("Pod/{}", p.key())),
        Object::Node(n) => Some(format!("Node/{}", n.name)),
        Object::Service(s) => Some(format!("Service/{}/{}", s.namespace, s.name)),
        Object::CidrGroup(g) => Some(format!("CiliumCIDRGroup/{}", g.name)),
        Object::Skipped { .. } => None,
    }
}

/// Parses and validates files as one change: every object, or every error.
pub fn parse_all(files: &[SourceFile], opts: &Options) -> Result<Vec<Sourced>> {
    let mut out = Vec::new();
    let mut diagnostics = Vec::new();
    for f in files {
        let text: std::sync::Arc<str> = std::sync::Arc::from(f.text.as_str());
        for (index, doc) in parse_file(&f.name, &f.text, opts).into_iter().enumerate() {
            diagnostics.extend(doc.errors.iter().map(|d| d.to_string()));
            if let Some(object) = doc.object
                && let Some(key) = object_key(&object)
            {
                out.push(Sourced {
                    key,
                    file: f.name.clone(),
                    index,
                    text: text.clone(),
                    object,
                });
            }
        }
    }
    if !diagnostics.is_empty() {
        let n = diagnostics.len();
        return Err(AgentError::Invalid {
            summary: format!(
                "{n} error{} in the change; nothing was applied and the last good policy stays enforced",
                if n == 1 { "" } else { "s" }
            ),
            diagnostics,
        });
    }
    Ok(out)
}

const EXTENSIONS: &[&str] = &["yaml", "yml", "json"];

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// What the watcher compares between polls: (path, mtime, size) of every file.
pub type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// The fingerprint of the manifests directory (empty if it does not exist).
pub fn fingerprint(dir: &Path) -> Fingerprint {
    let mut files = Vec::new();
    if walk(dir, &mut files).is_err() {
        return Vec::new();
    }
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let mtime = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (p, mtime, len)
        })
        .collect()
}

/// Reads every manifest file of `dir` (none if it does not exist).
pub fn read_dir(dir: &Path) -> Result<Vec<SourceFile>> {
    let mut files = Vec::new();
    match walk(dir, &mut files) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AgentError::io(format!("listing {}", dir.display()), e)),
    }
    files.sort();
    let mut out = Vec::new();
    for p in files {
        let bytes =
            std::fs::read(&p).map_err(|e| AgentError::io(format!("reading {}", p.display()), e))?;
        let text = String::from_utf8(bytes).map_err(|_| AgentError::Invalid {
            summary: "a manifest is not UTF-8".into(),
            diagnostics: vec![format!("{}:1:1: not UTF-8 text", p.display())],
        })?;
        out.push(SourceFile {
            name: p.display().to_string(),
            text,
        });
    }
    Ok(out)
}

/// One stored API document.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredDoc {
    key: String,
    file: String,
    index: usize,
    text: String,
}

/// Objects applied through the API, persisted in `<state_dir>/api-objects.json`
/// (so a restarted agent enforces them again).
#[derive(Debug)]
pub struct ApiStore {
    path: PathBuf,
    docs: BTreeMap<String, StoredDoc>,
}

impl ApiStore {
    /// Loads the store (empty if absent).
    pub fn load(path: PathBuf) -> Result<Self> {
        let docs: Vec<StoredDoc> = store::read_json(&path)?.unwrap_or_default();
        Ok(ApiStore {
            path,
            docs: docs.into_iter().map(|d| (d.key.clone(), d)).collect(),
        })
    }

    /// The stored objects, decoded again (stored documents were valid when
    /// applied; one that no longer decodes is skipped with a warning).
    pub fn objects(&self, opts: &Options) -> Vec<Sourced> {
        let mut out = Vec::new();
        for d in self.docs.values() {
            let docs = parse_file(&d.file, &d.text, opts);
            match docs.into_iter().nth(d.index).and_then(|r| r.object) {
                Some(object) if object_key(&object).as_deref() == Some(&d.key) => {
                    out.push(Sourced {
                        key: d.key.clone(),
                        file: d.file.clone(),
                        index: d.index,
                        text: std::sync::Arc::from(d.text.as_str()),
                        object,
                    })
                }
                _ => {
                    tracing::warn!(key = %d.key, file = %d.file, "stored API object no longer decodes; skipped")
                }
            }
        }
        out
    }

    /// A copy with `objects` (from `files`) added or replaced.
    pub fn with_applied(&self, files: &[SourceFile], objects: &[Sourced]) -> ApiStore {
        let mut docs = self.docs.clone();
        for o in objects {
            let text = files
                .iter()
                .find(|f| f.name == o.file)
                .map(|f| f.text.clone())
                .unwrap_or_default();
            docs.insert(
                o.key.clone(),
                StoredDoc {
                    key: o.key.clone(),
                    file: o.file.clone(),
                    index: o.index,
                    text,
                },
            );
        }
        ApiStore {
            path: self.path.clone(),
            docs,
        }
    }

    /// A copy without `keys`; also returns the keys that were not stored.
    pub fn without(&self, keys: &[String]) -> (ApiStore, Vec<String>) {
        let mut docs = self.docs.clone();
        let mut missing = Vec::new();
        for k in keys {
            if docs.remove(k).is_none() {
                missing.push(k.clone());
            }
        }
        (
            ApiStore {
                path: self.path.clone(),
                docs,
            },
            missing,
        )
    }

    /// Whether `key` is stored.
    pub fn contains(&self, key: &str) -> bool {
        self.docs.contains_key(key)
    }

    /// Persists the store.
    pub fn save(&self) -> Result<()> {
        let docs: Vec<&StoredDoc> = self.docs.values().collect();
        store::write_json(&self.path, &docs)
    }
}
