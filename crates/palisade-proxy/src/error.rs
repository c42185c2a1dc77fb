//! The proxy's errors.

use std::path::PathBuf;

/// Everything that can go wrong outside a single request (requests never
/// fail with an error: they get an HTTP status).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Reading a feed file or manifest directory.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The feed snapshot is not valid JSON of the expected shape.
    #[error("{path}: invalid policy feed: {message}")]
    FeedFormat { path: String, message: String },
    /// A manifest in the feed is invalid; the whole update is rejected.
    #[error("invalid manifests ({count} error(s)), the previous policy stays in force: {first}")]
    Manifests { count: usize, first: String },
    /// Entering the node network namespace.
    #[error("entering network namespace `{name}`: {source}")]
    Netns {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// Creating, binding or configuring a socket.
    #[error("{context}: {source}")]
    Socket {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Running `nft` or `ip` to install the redirection.
    #[error("installing the redirection: `{command}` failed: {message}")]
    Redirect { command: String, message: String },
    /// Building the async runtime or a thread.
    #[error("starting the proxy runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The proxy thread stopped before it was ready.
    #[error("the proxy thread stopped before it was ready")]
    NotStarted,
}

impl ProxyError {
    pub(crate) fn socket(context: impl Into<String>, source: std::io::Error) -> Self {
        ProxyError::Socket {
            context: context.into(),
            source,
        }
    }
}
