//! Entering the node network namespace. `setns` switches only the calling
//! thread; threads it creates afterwards (the runtime's workers, child
//! processes such as `nft`) inherit the namespace.

use crate::error::ProxyError;
use std::os::fd::AsRawFd;

/// Moves the calling thread into `/var/run/netns/<name>`.
pub fn enter(name: &str) -> Result<(), ProxyError> {
    let path = std::path::Path::new("/var/run/netns").join(name);
    let file = std::fs::File::open(&path).map_err(|source| ProxyError::Netns {
        name: name.to_string(),
        source,
    })?;
    // SAFETY: a valid namespace fd; only this thread's namespace changes.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(ProxyError::Netns {
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
