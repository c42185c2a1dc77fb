//! The API server: a unix socket (mode 0600, root only), one JSON request
//! per line, one JSON response per line (see [`crate::api`]).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use crate::agent::AgentShared;
use crate::api::{Request, Response};
use crate::error::{AgentError, Result};

/// Binds the socket: refuses if another agent answers on it, removes a
/// stale one, creates the parent directory (0700) if missing.
pub(crate) fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(AgentError::Conflict(format!(
                "another agent is already listening on {}",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(|e| AgentError::io(format!("removing stale {}", path.display()), e))?;
    }
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        crate::agent::private_dir(parent)?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| AgentError::io(format!("binding {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| AgentError::io(format!("chmod 0600 {}", path.display()), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| AgentError::io("socket nonblocking", e))?;
    Ok(listener)
}

/// Accepts connections until the agent stops; one thread per connection.
pub(crate) fn serve(shared: Arc<AgentShared>, listener: UnixListener) {
    while !shared.stopped() {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, 200) };
        if rc <= 0 {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let s = shared.clone();
                let _ = std::thread::Builder::new()
                    .name("palisade-api-conn".into())
                    .spawn(move || connection(s, stream));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::warn!(error = %e, "accept"),
        }
    }
}

fn connection(shared: Arc<AgentShared>, stream: UnixStream) {
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                tracing::debug!(?req, "api request");
                shared.handle(req)
            }
            Err(e) => Response::err(format!("bad request: {e}"), vec![]),
        };
        let mut out = match serde_json::to_string(&resp) {
            Ok(s) => s,
            Err(e) => format!(r#"{{"ok":false,"error":"encoding the response: {e}"}}"#),
        };
        out.push('\n');
        if writer.write_all(out.as_bytes()).is_err() {
            break;
        }
    }
}
