//! Small JSON files in the state directory, written atomically
//! (temporary file + rename) so a crash never leaves half a file.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{AgentError, Result};

/// Reads `path` as JSON; `Ok(None)` if it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AgentError::io(format!("reading {}", path.display()), e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| AgentError::Format {
            context: path.display().to_string(),
            message: e.to_string(),
        })
}

/// Writes `value` as JSON to `path` atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| AgentError::Format {
        context: path.display().to_string(),
        message: e.to_string(),
    })?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .map_err(|e| AgentError::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| AgentError::io(format!("renaming to {}", path.display()), e))
}
