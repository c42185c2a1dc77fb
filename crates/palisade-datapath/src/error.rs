//! The datapath's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the datapath library.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The embedded eBPF object failed to load (verifier, map creation, ...).
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A map expected in the object was missing.
    #[error("map `{0}` missing from the eBPF object")]
    MapMissing(&'static str),
    /// A pinned map has a different shape than this build expects.
    #[error(
        "pinned map `{name}` at {path} is incompatible with this build \
         (type/key/value size found {found}, expected {expected}); \
         remove the pin root to start from scratch"
    )]
    MapIncompatible {
        /// Map name.
        name: &'static str,
        /// Pin path.
        path: PathBuf,
        /// What the pinned map is.
        found: String,
        /// What this build needs.
        expected: String,
    },
    /// A map operation failed.
    #[error("{op} on map `{map}`: {source}")]
    Map {
        /// Operation (insert, remove, lookup, iterate...).
        op: &'static str,
        /// Map name.
        map: &'static str,
        /// The underlying error.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// A program operation (load, attach, link update) failed.
    #[error("{op} program `{program}`: {source}")]
    Program {
        /// Operation.
        op: &'static str,
        /// Program name.
        program: &'static str,
        /// The underlying error.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// Pinning or opening a pin failed.
    #[error("pin {path}: {message}")]
    Pin {
        /// Pin path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A file-system or syscall error with context.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the delta would exceed the per-endpoint policy capacity.
    #[error(
        "policy for endpoint {ep_id} would hold {requested} entries, over its capacity of \
         {capacity} (currently {current}); nothing was written"
    )]
    PolicyCapacity {
        /// Endpoint id.
        ep_id: u32,
        /// Per-endpoint capacity.
        capacity: usize,
        /// Entries the endpoint holds now.
        current: usize,
        /// Entries it would hold after the delta.
        requested: usize,
    },
    /// A policy key or value is invalid (bad prefix, key for another endpoint...).
    #[error("invalid policy entry: {0}")]
    InvalidPolicy(String),
    /// An invalid argument (prefix length, interface name...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No interface with that name exists in this thread's network namespace.
    #[error("no interface named `{0}` in this network namespace")]
    InterfaceNotFound(String),
    /// The event reader was already taken from this datapath.
    #[error("the event ring buffer reader was already taken")]
    EventReaderTaken,
}

impl DatapathError {
    pub(crate) fn map(op: &'static str, map: &'static str, source: aya::maps::MapError) -> Self {
        DatapathError::Map {
            op,
            map,
            source: Box::new(source),
        }
    }

    pub(crate) fn program(
        op: &'static str,
        program: &'static str,
        source: aya::programs::ProgramError,
    ) -> Self {
        DatapathError::Program {
            op,
            program,
            source: Box::new(source),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DatapathError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = DatapathError> = std::result::Result<T, E>;
