//! The agent's error type.

use palisade_datapath::DatapathError;
use palisade_datapath::netns::NetnsError;

/// Everything that can go wrong in the agent library.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A change was invalid and rejected whole; the last good state stays enforced.
    #[error("rejected: {summary}")]
    Invalid {
        /// One line.
        summary: String,
        /// Every error, `file:line:col: field: message`.
        diagnostics: Vec<String>,
    },
    /// The datapath failed.
    #[error("datapath: {0}")]
    Datapath(#[from] DatapathError),
    /// Namespace or interface plumbing failed.
    #[error("network namespace plumbing: {0}")]
    Netns(#[from] NetnsError),
    /// File-system error with context.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Error.
        #[source]
        source: std::io::Error,
    },
    /// A state or config file is malformed.
    #[error("{context}: {message}")]
    Format {
        /// Which file.
        context: String,
        /// What is wrong.
        message: String,
    },
    /// No such pod/endpoint.
    #[error("not found: {0}")]
    NotFound(String),
    /// A request that cannot be honoured (duplicate pod, address exhausted...).
    #[error("{0}")]
    Conflict(String),
    /// Talking to the agent over its socket failed.
    #[error("agent API at {socket}: {message}")]
    Api {
        /// Socket path.
        socket: String,
        /// What went wrong.
        message: String,
    },
}

impl AgentError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            context: context.into(),
            source,
        }
    }

    /// The diagnostics of an [`AgentError::Invalid`] (empty otherwise).
    pub fn diagnostics(&self) -> &[String] {
        match self {
            AgentError::Invalid { diagnostics, .. } => diagnostics,
            _ => &[],
        }
    }
}

/// Result alias.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;
